"""Benchmark registry and loading: local layouts, list references, caps, --limit, the run's test split, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.data.records import InstructionRecord
from switch_core.data.splits import write_records
from switch_core.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkNotFoundError,
    BenchmarkSpec,
    read_benchmark,
    subsample_indices,
)

PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request." \
    "\n\n### Instruction:\n{}\n\n### Response:\n"


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int, list_refs: bool = False) -> list[dict]:
    return [
        {"topic": "t", "instruction": f"question {i}", "input": "", "prompt": PROMPT.format(f"question {i}"),
         "output": [f"answer {i}", f"other {i}"] if list_refs else f"answer {i}"}
        for i in range(n)
    ]


def test_registry_holds_the_five_sets_and_the_run_test_split():
    assert list(BENCHMARKS) == ["dolly", "self-inst", "vicuna", "sinst", "uinst", "embedded"]
    assert BENCHMARKS["uinst"].max_examples == 10_000
    assert "sinst/11_/valid.jsonl" in BENCHMARKS["sinst"].local_files
    assert BENCHMARKS["embedded"].run_split == "test"


def test_local_minillm_file_is_read_with_prompt_and_ids(tmp_path):
    _write(tmp_path / "dolly" / "valid.jsonl", _rows(5))
    loaded = read_benchmark("dolly", data_dir=tmp_path)
    assert loaded.source == str(tmp_path / "dolly" / "valid.jsonl")
    assert loaded.available == 5 and loaded.limit is None
    first = loaded.records[0]
    assert first.id == "dolly-00000"
    assert first.references == ("answer 0",)
    assert first.prompt == PROMPT.format("question 0")


def test_sinst_upstream_layout_and_list_references(tmp_path):
    _write(tmp_path / "sinst" / "11_" / "valid.jsonl", _rows(3, list_refs=True))
    records = read_benchmark("sinst", data_dir=tmp_path).records
    assert [r.references for r in records] == [(f"answer {i}", f"other {i}") for i in range(3)]


def test_uinst_keeps_only_the_first_10000(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10_003)]
    _write(tmp_path / "uinst" / "11_" / "valid.jsonl", rows)
    loaded = read_benchmark("uinst", data_dir=tmp_path)
    assert loaded.available == 10_000
    assert loaded.records[-1].instruction == "q9999"


def test_limit_is_a_seeded_subsample_in_file_order(tmp_path):
    _write(tmp_path / "vicuna" / "valid.jsonl", _rows(40))
    a = [r.id for r in read_benchmark("vicuna", data_dir=tmp_path, limit=7, seed=0).records]
    b = [r.id for r in read_benchmark("vicuna", data_dir=tmp_path, limit=7, seed=0).records]
    c = [r.id for r in read_benchmark("vicuna", data_dir=tmp_path, limit=7, seed=1).records]
    assert a == b and a != c
    assert len(a) == 7 and a == sorted(a)
    assert len(read_benchmark("vicuna", data_dir=tmp_path, limit=100).records) == 40
    assert subsample_indices(5, None, 0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="limit"):
        subsample_indices(5, 0, 0)


def test_missing_set_error_lists_every_place_looked(tmp_path):
    with pytest.raises(BenchmarkNotFoundError) as info:
        read_benchmark("sinst", data_dir=tmp_path)  # tests run with HF_HUB_OFFLINE=1: the hub attempt fails fast
    message = str(info.value)
    assert str(tmp_path / "sinst" / "valid.jsonl") in message
    assert str(tmp_path / "sinst" / "11_" / "valid.jsonl") in message
    assert "hub MiniLLM/sinst/11_/valid.jsonl" in message
    with pytest.raises(BenchmarkNotFoundError, match="hub") as info:
        read_benchmark("dolly", data_dir=tmp_path, hub=False)
    assert "hub MiniLLM" not in str(info.value)


def test_unknown_benchmark_names_the_registered_ones(tmp_path):
    with pytest.raises(BenchmarkNotFoundError, match="registered benchmarks: dolly, self-inst"):
        read_benchmark("doly", data_dir=tmp_path)


def test_hub_path_through_a_local_copy_of_the_repo(tmp_path):
    _write(tmp_path / "hub-copy" / "11_" / "valid.jsonl", _rows(4, list_refs=True))
    spec = BenchmarkSpec("sinst-hub", "test", local_files=("nowhere.jsonl",), hub_repo=str(tmp_path / "hub-copy"),
                         hub_file="11_/valid.jsonl")
    loaded = read_benchmark(spec, data_dir=tmp_path / "empty")
    assert loaded.source == f"hub:{tmp_path / 'hub-copy'}/11_/valid.jsonl"
    assert len(loaded.records) == 4 and loaded.records[0].id == "sinst-hub-00000"


def test_embedded_reads_the_run_test_split(tmp_path):
    records = [InstructionRecord(id=f"e{i}", instruction=f"do {i}", references=(f"done {i}",)) for i in range(3)]
    write_records(records, tmp_path / "run" / "data" / "test.jsonl")
    assert read_benchmark("embedded", data_dir=None, run_dir=tmp_path / "run").records == records
    with pytest.raises(BenchmarkNotFoundError, match="prepare-data"):
        read_benchmark("embedded", data_dir=None, run_dir=tmp_path / "other")
