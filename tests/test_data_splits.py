"""Seeded splits (deterministic, disjoint, complete) and the lossless JSONL round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.data.records import DataFormatError, InstructionRecord
from switch_core.data.splits import read_records, split_records, write_records, write_splits


def _records(n: int) -> list[InstructionRecord]:
    return [InstructionRecord(id=f"r{i:03d}", instruction=f"Task {i}", references=(f"out {i}",)) for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    records = _records(50)
    splits = split_records(records, dev_size=7, test_size=5, seed=11)
    again = split_records(records, dev_size=7, test_size=5, seed=11)
    assert splits == again
    assert {k: len(v) for k, v in splits.items()} == {"train": 38, "dev": 7, "test": 5}
    ids = {name: {r.id for r in rows} for name, rows in splits.items()}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    assert ids["train"] | ids["dev"] | ids["test"] == {r.id for r in records}
    # each split keeps the input order
    for rows in splits.values():
        assert [r.id for r in rows] == sorted(r.id for r in rows)
    other = split_records(records, dev_size=7, test_size=5, seed=12)
    assert {r.id for r in other["dev"]} != ids["dev"]


def test_split_matches_seeded_shuffle_reference() -> None:
    import random

    records = _records(10)
    order = list(range(10))
    random.Random(3).shuffle(order)
    splits = split_records(records, dev_size=2, seed=3)
    assert [r.id for r in splits["dev"]] == [f"r{i:03d}" for i in sorted(order[:2])]
    assert "test" not in splits and len(splits["train"]) == 8


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="leaves no training record out of 5"):
        split_records(_records(5), dev_size=3, test_size=2, seed=0)
    with pytest.raises(ValueError, match="dev_size must be >= 1"):
        split_records(_records(5), dev_size=0, seed=0)
    with pytest.raises(ValueError, match="test_size must be >= 0"):
        split_records(_records(5), dev_size=1, test_size=-1, seed=0)
    duplicated = _records(4) + [_records(1)[0]]
    with pytest.raises(DataFormatError, match="duplicate record id 'r000'"):
        split_records(duplicated, dev_size=1, seed=0)


def test_write_read_round_trip_is_lossless(tmp_path: Path) -> None:
    records = [
        InstructionRecord(
            id="u1",
            instruction="Übersetze: «naïve» 😀\nzweite Zeile",
            references=("a\r\nb", "line\u2028separator", "tab\tq\"uote'"),
            input="ctx with \\backslash",
            category="cat",
            prompt="P\n\n### Response:\n",
        ),
        InstructionRecord(id="u2", instruction="Plain", references=("x",)),
    ]
    path = write_records(records, tmp_path / "sub" / "train.jsonl")
    assert path == tmp_path / "sub" / "train.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 3 and lines[2] == ""  # one object per line, trailing newline
    assert json.loads(lines[1]) == records[1].to_dict()
    assert read_records(path) == records
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temporary file left


def test_write_splits_and_empty_split_errors(tmp_path: Path) -> None:
    splits = split_records(_records(12), dev_size=2, test_size=2, seed=0)
    paths = write_splits(splits, tmp_path)
    assert {name: p.name for name, p in paths.items()} == {
        "train": "train.jsonl",
        "dev": "dev.jsonl",
        "test": "test.jsonl",
    }
    assert {name: read_records(p) for name, p in paths.items()} == splits
    with pytest.raises(DataFormatError, match="refusing to write an empty split"):
        write_records([], tmp_path / "empty.jsonl")
    assert not (tmp_path / "empty.jsonl").exists()
    with pytest.raises(ValueError, match="unknown split name"):
        write_splits({"validation": _records(1)}, tmp_path)


def test_read_records_rejects_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    good = json.dumps(_records(1)[0].to_dict())
    path.write_text(good + "\n" + json.dumps({"id": "x", "instruction": "y", "references": "z"}) + "\n")
    with pytest.raises(DataFormatError, match=r"dev.jsonl, line 2, field 'references': .*must be a list"):
        read_records(path)
    path.write_text("")
    with pytest.raises(DataFormatError, match="dev.jsonl: no records"):
        read_records(path)
