"""dict_diff: the dotted keys (and both values) that differ between two nested dicts."""
from __future__ import annotations

from switch_core.dict_diff import dict_changes


def test_nested_changes_are_named_by_dotted_key_with_both_values() -> None:
    before = {"optim": {"lr": 1e-4, "epochs": 2, "betas": [0.9, 0.99]}, "method": {"loss": "fkl"}, "train": 80}
    after = {"optim": {"lr": 2e-4, "epochs": 2, "betas": [0.9, 0.999]}, "method": {"loss": "fkl"}, "train": 80}
    assert [str(c) for c in dict_changes(before, after)] == [
        "optim.betas ([0.9, 0.99] -> [0.9, 0.999])", "optim.lr (0.0001 -> 0.0002)",
    ]
    assert dict_changes(before, before) == []


def test_added_removed_and_retyped_keys_and_long_values() -> None:
    before = {"inputs": {"init": "sha256:" + "a" * 64}, "rollout": None, "code": "x"}
    after = {"inputs": {"init": "sha256:" + "b" * 64, "seqkd": "sha256:c"}, "rollout": {"tau0": 0.3}, "code": "y"}
    changes = dict_changes(before, after, ignore=frozenset({"code"}))
    assert [c.key for c in changes] == ["inputs.init", "inputs.seqkd", "rollout", "rollout.tau0"]
    assert str(changes[0]) == "inputs.init (sha256:aaaaaaaaaaaaaaaa… -> sha256:bbbbbbbbbbbbbbbb…)"
    assert [str(c) for c in changes[1:]] == [
        "inputs.seqkd (absent -> sha256:c)", "rollout (null -> absent)", "rollout.tau0 (absent -> 0.3)",
    ]
