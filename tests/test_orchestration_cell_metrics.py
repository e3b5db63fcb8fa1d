"""The summary metrics an ablation cell's MLflow run gets (tasks.stage_record.cell_metrics), on hand-made outputs:
averages over benchmarks per seed, then over seeds, the stop rate and length in their units, the teacher share of
the trace, and nothing for what is absent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.layout import RunLayout
from switch_core.reporting.loading import ReportInputError
from tasks.stage_record import cell_metrics


def _metrics(root: Path, run: str, bench: str, rouge: list[float], stops: list[float], lengths: list[float]) -> None:
    per_seed = [{"seed": seed, "rouge_l": r, "bleu": 0.0, "exact_match": 0.0, "stopped_fraction": s,
                 "mean_prediction_length": n, "by_length": {}}
                for seed, r, s, n in zip((1, 2, 3), rouge, stops, lengths, strict=True)]
    path = root / "eval" / run / bench / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": bench, "per_seed": per_seed,
                                "aggregate": {k: {"mean": 0.0, "sd": 0.0} for k in ("rouge_l", "bleu", "exact_match")}}))


def test_cell_metrics_average_per_seed_then_over_seeds(tmp_path: Path) -> None:
    # per-seed averages over the two benchmarks: ROUGE-L 15, 16, 20 (mean 17, sd sqrt(7)); stop 0.5, 0.6, 0.7 -> 60%;
    # length 30, 40, 50 -> 40 tokens
    _metrics(tmp_path, "cell", "dolly", [10.0, 12.0, 20.0], [0.4, 0.6, 0.8], [20.0, 30.0, 40.0])
    _metrics(tmp_path, "cell", "sinst", [20.0, 20.0, 20.0], [0.6, 0.6, 0.6], [40.0, 50.0, 60.0])
    trace = tmp_path / "state" / "cell" / "rollout_traces.jsonl"
    trace.parent.mkdir(parents=True)
    trace.write_text("\n".join(json.dumps({"step": s, "sources": ["student"] * 3 + ["teacher"]}) for s in (1, 2)))
    metrics = cell_metrics(RunLayout(tmp_path), "cell")
    assert metrics == pytest.approx({"average/rouge_l": 17.0, "average/rouge_l_sd": 7.0 ** 0.5,
                                     "average/stop_rate": 60.0, "average/tokens_per_answer": 40.0,
                                     "rollout/teacher_share": 25.0})


def test_cell_metrics_of_a_cell_without_outputs_or_trace(tmp_path: Path) -> None:
    assert cell_metrics(RunLayout(tmp_path), "cell") == {}
    _metrics(tmp_path, "cell", "dolly", [10.0, 12.0, 20.0], [0.4, 0.6, 0.8], [20.0, 30.0, 40.0])
    assert "rollout/teacher_share" not in cell_metrics(RunLayout(tmp_path), "cell")


def test_cell_metrics_name_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "cell" / "dolly" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ReportInputError, match="dolly/metrics.json"):
        cell_metrics(RunLayout(tmp_path), "cell")
