"""Real data and the real embedded student: the four shared benchmark sets end to end, and batched throughput.

The student is the first-and-last-kept 6-layer pruned SmolLM2-135M-Instruct, built here from the embedded teacher.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.data.prompts import format_prompt
from switch_core.evaluation.benchmarks import read_benchmark
from switch_core.evaluation.evaluate import EvalProtocol, evaluate_model, measure_throughput, median_length_window

pytestmark = [pytest.mark.real_data, pytest.mark.real_model, pytest.mark.slow]

REAL_SETS = ("dolly", "self-inst", "vicuna", "sinst")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, smollm2_available) -> Path:
    from switch_core.models.checkpoint import save_pretrained_atomic
    from switch_core.models.embedded import embedded_teacher_dir
    from switch_core.models.loading import load_causal_lm, load_tokenizer
    from switch_core.models.student import prune_layers

    teacher = embedded_teacher_dir()
    student = prune_layers(load_causal_lm(teacher), 6)
    return save_pretrained_atomic(student, load_tokenizer(teacher), tmp_path_factory.mktemp("real") / "student")


@pytest.fixture(scope="module")
def benchmarks(shared_data):
    return [read_benchmark(name, data_dir=shared_data, limit=10, hub=False) for name in REAL_SETS]


def test_embedded_student_on_ten_examples_of_each_real_set(student_dir, benchmarks, tmp_path):
    protocol = EvalProtocol(seeds=(10,), max_new_tokens=32, batch_size=16, limit=10)
    out = tmp_path / "student"
    summary = evaluate_model(student_dir, benchmarks, protocol, out, throughput_prompts=0, show_progress=False)
    assert [o.name for o in summary.outcomes] == list(REAL_SETS)
    for name in REAL_SETS:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["num_examples"] == 10 and metrics["limit"] == 10
        assert metrics["available_examples"] == {"dolly": 500, "self-inst": 242, "vicuna": 80, "sinst": 1694}[name]
        assert 0.0 <= metrics["aggregate"]["rouge_l"]["mean"] <= 100.0
        rows = [json.loads(x) for x in (out / name / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 10
        assert all(r["prompt"].endswith("### Response:\n") for r in rows)
        assert all(r["prediction_length"] <= 32 for r in rows)
        assert sum(bool(r["prediction"]) for r in rows) >= 5  # a pruned, untrained student still emits text
        assert all(r["reference_length"] > 0 for r in rows)
    sinst = [json.loads(x) for x in (out / "sinst" / "generations.jsonl").read_text().splitlines()]
    assert any(len(r["references"]) > 1 for r in sinst)


def test_batch_16_reaches_three_times_one_prompt_at_a_time(student_dir, benchmarks):
    from switch_core.models.loading import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(student_dir), load_tokenizer(student_dir)
    prompts = [format_prompt(r) for bench in benchmarks for r in bench.records]
    window = median_length_window(prompts, tokenizer, 16)
    throughput = measure_throughput(model, tokenizer, window, EvalProtocol(seeds=(10,)), max_new_tokens=64)
    assert throughput["batched"]["batch_size"] == 16 and throughput["prompts"] == 16
    assert throughput["batched"]["tokens"] > 16 * 32  # most rows run long: decoding, not prefill, is measured
    assert throughput["speedup"] >= 3.0, throughput
