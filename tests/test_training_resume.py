"""Resume: a run killed with SIGKILL mid-epoch and resumed reaches the weights of an uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kill_resume import kill_at_step, run_to_end, write_script
from safetensors.torch import load_file
from test_training_support import make_job, method

from switch_core.hashing import source_fingerprint
from switch_core.training import StateError, StateMismatchError, state, train
from switch_core.training.state import latest_state, resume_fingerprint, will_resume

# DistiLLM's adaptive schedule from φ = 0.5 with a small buffer: ground-truth, fresh-rollout and replay steps all
# occur, so the resumed run must restore the replay buffer, φ and every random stream.
METHOD = {"init_threshold": 0.5, "replay_capacity": 8}
OPTIM = {"save_every": 2, "epochs": 2}  # 5 steps per epoch: states at 2, 4, 5, 6, 8, 10

CHILD = """
job = make_job(root, method("distillm", **{method_kw}), resume=resume, **{optim_kw})
train(job, tracker=Hang(root / "events.jsonl"))
"""


def _state_tensors(state_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(latest_state(state_dir) / "model.pt", weights_only=True)


@pytest.mark.slow  # two subprocesses, each importing torch + transformers (~10 s apiece on 2 busy cores)
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path) -> None:
    script = write_script(tmp_path / "child.py", CHILD.format(method_kw=repr(METHOD), optim_kw=repr(OPTIM)))
    killed = tmp_path / "killed"
    killed.mkdir()

    kill_at_step(script, killed, 7)
    assert latest_state(killed / "state" / "run").name == "step-00000006"  # mid-epoch 2 (steps 6-10)

    assert "resuming at step 6/10" in run_to_end(script, killed, "resume")

    reference = make_job(tmp_path / "uninterrupted", method("distillm", **METHOD), **OPTIM)
    result = train(reference)
    assert result.steps == 10
    got, want = _state_tensors(killed / "state" / "run"), _state_tensors(reference.state_dir)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    best_got = load_file(killed / "models" / "run" / "model.safetensors")
    best_want = load_file(reference.output_dir / "model.safetensors")
    assert all(torch.equal(best_got[k], best_want[k]) for k in best_want)


def test_resume_refuses_a_state_of_other_settings(tmp_path) -> None:
    train(make_job(tmp_path, method("sft"), with_teacher=False, max_steps=2))
    with pytest.raises(StateError, match="other settings"):
        train(make_job(tmp_path, method("sft"), with_teacher=False, max_steps=3, resume=True))


def test_resume_of_a_finished_run_is_a_no_op(tmp_path) -> None:
    first = train(make_job(tmp_path, method("sft"), with_teacher=False, max_steps=2))
    again = train(make_job(tmp_path, method("sft"), with_teacher=False, max_steps=2, resume=True))
    assert again.steps == first.steps == 2 and again.best_metrics == first.best_metrics


def _sft_job(tmp_path: Path, **kwargs):
    return make_job(tmp_path, method("sft"), with_teacher=False, max_steps=2, **kwargs)


def test_a_state_of_other_inputs_is_refused_or_restarted(tmp_path) -> None:
    first = _sft_job(tmp_path)
    first.inputs = {"student_init": "sha256:aaa"}
    reference = train(first)

    changed = _sft_job(tmp_path, resume=True)
    changed.inputs = {"student_init": "sha256:bbb"}  # the start checkpoint was re-made
    with pytest.raises(StateMismatchError, match=r"changed: inputs.student_init \(sha256:aaa -> sha256:bbb\)") as refused:
        train(changed)
    assert refused.value.changed == ["inputs.student_init"]

    restarted = _sft_job(tmp_path, resume=True, restart_if_incompatible=True)
    restarted.inputs = {"student_init": "sha256:bbb"}
    assert not will_resume(restarted, 1)
    result = train(restarted)  # starts over: the same steps and weights as a fresh run
    assert result.steps == 2 and result.best_metrics == reference.best_metrics
    saved = json.loads((latest_state(restarted.state_dir) / "trainer.json").read_text())
    assert saved["fingerprint"]["inputs"] == {"student_init": "sha256:bbb"}

    again = _sft_job(tmp_path, resume=True, restart_if_incompatible=True)
    again.inputs = {"student_init": "sha256:bbb"}
    assert will_resume(again, 1)


def test_other_library_code_warns_on_resume_and_restarts_a_compatible_resume(tmp_path, monkeypatch, capsys) -> None:
    train(_sft_job(tmp_path))
    monkeypatch.setattr(state, "source_fingerprint", lambda: "sha256:edited")

    strict = _sft_job(tmp_path, resume=True)
    assert will_resume(strict, 1)
    capsys.readouterr()
    assert train(strict).steps == 2
    err = capsys.readouterr().err
    assert "resuming at step 2/2" in err and "other switch_core code" in err

    compatible = _sft_job(tmp_path, resume=True, restart_if_incompatible=True)
    assert not will_resume(compatible, 1)
    train(compatible)
    assert "starting over (changed: code)" in capsys.readouterr().err


def test_resume_fingerprint_names_settings_inputs_and_code(tmp_path) -> None:
    job = _sft_job(tmp_path)
    job.inputs = {"train": "sha256:t"}
    fingerprint = resume_fingerprint(job)
    assert fingerprint["inputs"] == {"train": "sha256:t"}
    assert fingerprint["code"] == source_fingerprint() and fingerprint["code"].startswith("sha256:")
    assert fingerprint["optim"]["max_steps"] == 2 and "log_every" not in fingerprint["optim"]
    assert fingerprint["rollout"] is None  # SFT rolls nothing out


def test_a_refused_state_names_the_changed_dotted_keys_and_values(tmp_path) -> None:
    """Not just ``changed: optim``: the key inside the section and its saved and current values."""
    saved = {"optim": {"lr": 1e-4, "epochs": 2}, "method": {"loss": "fkl"}, "inputs": {"init": "sha256:a"},
             "code": "sha256:old"}
    folder = tmp_path / "step-00000002"
    folder.mkdir()
    (folder / "trainer.json").write_text(json.dumps({"step": 2, "world_size": 1, "fingerprint": saved}))
    (tmp_path / "latest").write_text("step-00000002\n")
    current = {**saved, "optim": {"lr": 2e-4, "epochs": 2}, "code": "sha256:new"}
    with pytest.raises(StateMismatchError) as refused:
        state.check_resumable(tmp_path, current, 1, lenient=frozenset({"code"}))
    assert "(changed: optim.lr (0.0001 -> 0.0002)); pass --restart" in str(refused.value)
    assert refused.value.changed == ["optim.lr"]
    assert state.state_changes(tmp_path, current, 1) == ["code", "optim.lr"]
    assert state.state_changes(tmp_path, {**saved, "code": "sha256:new"}, 1, lenient=frozenset({"code"})) == []
