"""The comparison report (switch-kd report): table values, limits shown, reference rows first, plots written,
training logs and traces optional, one trace line per step."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from switch_core.config import Config
from switch_core.reporting.loading import ReportInputError, collect_metrics, read_training_log
from switch_core.reporting.report_md import build_report
from switch_core.reporting.scores import results_table
from switch_core.reporting.tables import markdown_table
from switch_core.reporting.teacher_share import teacher_share_by_position

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(bench: str, mean: float, sd: float, n: int = 10, limit: int | None = None) -> dict:
    by_length = {"[0,5]": {"n": 4, "mean": mean - 5, "sd": sd}, "[51,inf)": {"n": n - 4, "mean": mean + 5, "sd": sd}}
    return {
        "benchmark": bench, "model": f"/models/{bench}", "num_examples": n, "available_examples": 500, "limit": limit,
        "protocol": {"seeds": [10, 20], "max_new_tokens": 256},
        "aggregate": {
            "rouge_l": {"mean": mean, "sd": sd}, "bleu": {"mean": mean / 2, "sd": 0.1},
            "exact_match": {"mean": 1.0, "sd": 0.0}, "by_length": by_length,
        },
    }


def _write_evals(root: Path) -> Path:
    evals = root / "evals"
    cases = {
        ("sft", "dolly"): _metrics("dolly", 20.0, 1.0),
        ("sft", "sinst"): _metrics("sinst", 30.0, 0.5),
        ("switch", "dolly"): _metrics("dolly", 26.25, 0.25),
        ("switch", "sinst"): _metrics("sinst", 31.75, 0.75),
        ("kd", "dolly"): _metrics("dolly", 24.0, 2.0, n=7, limit=7),
    }
    for (model, bench), content in cases.items():
        path = evals / model / bench / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(content))
    return evals


def test_table_values_and_average(tmp_path):
    metrics = collect_metrics(_write_evals(tmp_path))
    table = results_table(metrics)
    assert list(table.index) == ["kd", "sft", "switch"]
    assert table.loc["sft", "dolly_mean"] == 20.0 and table.loc["switch", "sinst_sd"] == 0.75
    assert table.loc["sft", "average"] == pytest.approx(25.0)
    assert table.loc["switch", "average"] == pytest.approx(29.0)
    assert pd.isna(table.loc["kd", "average"])  # kd lacks sinst: no average over a different set of benchmarks


def test_markdown_shows_mean_sd_and_limits(tmp_path):
    md = markdown_table(collect_metrics(_write_evals(tmp_path), models=["switch", "sft", "kd"]))
    lines = md.splitlines()
    assert lines[0] == "| model | dolly | sinst (n=10) | average |"
    assert lines[2] == "| switch | 26.25 ± 0.25 (n=10) | 31.75 ± 0.75 | 29.00 |"
    assert lines[4] == "| kd | 24.00 ± 2.00 (n=7, limit 7) | – | – |"


def test_build_report_with_logs_and_traces(tmp_path):
    evals = _write_evals(tmp_path)
    runs = tmp_path / "runs"
    (runs / "switch").mkdir(parents=True)
    (runs / "kd").mkdir()
    log_lines = [
        {"time": 0, "event": "params", "params": {"optim.lr": 1e-4}},
        {"time": 1, "event": "metrics", "step": 0, "metrics": {"train/loss": 3.0, "dev/rouge_l": 10.0}},
        {"step": 10, "metrics": {"train/loss": 2.0, "train/teacher_share": 0.5}},
    ]
    (runs / "switch" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log_lines))
    (runs / "kd" / "metrics.jsonl").write_text(json.dumps(log_lines[1]) + "\n")
    traces = [{"sources": ["teacher", "student", "teacher"]}, {"sources": ["teacher", "teacher"]}]
    (runs / "switch" / "rollout_traces.jsonl").write_text("".join(json.dumps(x) + "\n" for x in traces))
    result = build_report(evals, tmp_path / "report", runs_dir=runs)
    names = sorted(p.name for p in result.plots)
    assert names == ["curve_dev_rouge_l.png", "curve_train_loss.png", "curve_train_teacher_share.png",
                     "rouge_by_length.png", "teacher_share_by_position.png"]
    for plot in result.plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC
    md = result.markdown.read_text()
    for name in names:
        assert f"]({name})" in md
    wide = pd.read_csv(result.csv, index_col="model")
    assert wide.loc["switch", "average"] == pytest.approx(29.0)
    long = pd.read_csv(result.csv_long)
    assert set(long["benchmark"]) == {"dolly", "sinst"} and "bleu_mean" in long
    assert [p.parent.name for p in result.train_logs] == ["kd", "switch"]


def test_report_without_logs_or_traces_says_so(tmp_path):
    result = build_report(_write_evals(tmp_path), tmp_path / "report", runs_dir=tmp_path / "no-runs")
    dvc_metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert dvc_metrics["switch"]["sinst"]["rouge_l"] == 31.75 and dvc_metrics["switch"]["sinst"]["rouge_l_sd"] == 0.75
    assert set(dvc_metrics["kd"]) == {"dolly"}
    md = result.markdown.read_text()
    assert "No training logs matched ['**/metrics.jsonl']" in md
    assert "No rollout traces matched ['**/rollout_traces.jsonl']" in md
    assert [p.name for p in result.plots] == ["rouge_by_length.png"]


def test_teacher_share_by_position_hand_computed(tmp_path):
    path = tmp_path / "rollout_traces.jsonl"
    rows = [
        {"sources": ["teacher", "student", "teacher"]},
        {"sources": [True, True]},
        {"teacher_share_by_position": [0.5, 0.25], "count_by_position": [2, 4]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = teacher_share_by_position(path)
    # position 0: 1 + 1 + 0.5*2 teacher of 1 + 1 + 2; position 1: 0 + 1 + 1 of 1 + 1 + 4; position 2: 1 of 1
    assert frame["count"].tolist() == [4.0, 6.0, 1.0]
    assert frame["share"].tolist() == pytest.approx([3 / 4, 2 / 6, 1.0])


def test_training_log_reader_keeps_metrics_events_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"event": "tags", "tags": {"a": "b"}}) + "\n"
        + json.dumps({"event": "metrics", "step": 5, "metrics": {"train/loss": 1.5, "dev/loss": "nan"}}) + "\n"
    )
    frame = read_training_log(path)
    assert frame["metric"].tolist() == ["train/loss", "dev/loss"]
    assert frame["value"].iloc[0] == 1.5 and pd.isna(frame["value"].iloc[1])
    path.write_text("{not json\n")
    with pytest.raises(ReportInputError, match="metrics.jsonl:1"):
        read_training_log(path)


def test_missing_evaluations_are_a_clear_error(tmp_path):
    with pytest.raises(ReportInputError, match="no evaluation results"):
        collect_metrics(tmp_path)
    with pytest.raises(ReportInputError, match=r"model\(s\) \['nope'\]"):
        collect_metrics(_write_evals(tmp_path), models=["nope"])


def test_cli_report(tmp_path, capsys):
    from switch_core.commands import report as command

    evals = _write_evals(tmp_path)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--evals", str(evals), "--out", "out", "--models", "sft,switch"])
    args.config, args.project_root = Config.model_validate({"run_dir": "run"}), tmp_path
    assert command.run(args) == 0
    assert (tmp_path / "out" / "report.md").is_file()
    assert "training logs read: 0; rollout traces read: 0" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "out" / "results.csv")["model"]) == ["sft", "switch"]


def test_a_trace_step_written_twice_counts_once_its_last_line_wins(tmp_path):
    path = tmp_path / "rollout_traces.jsonl"
    rows = [
        {"step": 1, "teacher_share_by_position": [1.0, 0.0], "count_by_position": [2, 2]},
        {"step": 2, "teacher_share_by_position": [0.0, 0.0], "count_by_position": [2, 2]},
        {"step": 1, "teacher_share_by_position": [0.5], "count_by_position": [4]},  # step 1 again (a resumed run)
        {"sources": ["teacher"]},  # lines without a step all count
        {"sources": ["teacher"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = teacher_share_by_position(path)
    # position 0: 0.5*4 (step 1, last line) + 0 (step 2) + 1 + 1 of 4 + 2 + 1 + 1; position 1: step 2 only
    assert frame["count"].tolist() == [8.0, 2.0]
    assert frame["teacher"].tolist() == [4.0, 0.0]


def test_reference_rows_come_first_and_are_labelled(tmp_path):
    evals = _write_evals(tmp_path)
    for model in ("teacher", "student-init"):
        path = evals / model / "dolly" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_metrics("dolly", 30.0, 1.0)))
    md = build_report(evals, tmp_path / "report").markdown.read_text()
    table = md.split("## ROUGE-L (mean ± sd over seeds)", 1)[1].split("Settings per model:", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["teacher (reference)", "student-init (untrained student)", "**methods**", "kd", "sft", "switch"]
    settings = md.split("Settings per model:", 1)[1].split("##", 1)[0]
    assert [line.split("|")[1].strip() for line in settings.splitlines() if line.startswith("| ")][1:3] == [
        "teacher (reference)", "student-init (untrained student)"]
    order = build_report(evals, tmp_path / "r2", models=["switch", "teacher", "kd"]).markdown.read_text()
    assert order.index("| teacher (reference) |") < order.index("| switch |") < order.index("| kd |")


def test_training_curves_leave_out_timings(tmp_path: Path) -> None:
    """The report is a tracked output: a metric that is a timing differs between two runs of the same inputs."""
    from switch_core.reporting.plots import plot_training_curves

    frame = pd.DataFrame({"step": [1, 2, 1, 2, 1, 2], "value": [2.0, 1.5, 3.1, 2.9, 40.0, 41.0],
                          "metric": ["train/loss"] * 2 + ["train/seconds"] * 2 + ["train/tokens_per_second"] * 2})
    assert list(plot_training_curves({"kd": frame}, tmp_path)) == ["train/loss"]


def test_the_settings_table_names_the_weights_dtype(tmp_path: Path) -> None:
    evals = _write_evals(tmp_path)
    bf16 = _metrics("dolly", 25.0, 1.0)
    bf16["protocol"]["dtype"] = "bfloat16"  # written by `evaluate --dtype bfloat16` (absent for float32)
    (evals / "teacher" / "dolly").mkdir(parents=True)
    (evals / "teacher" / "dolly" / "metrics.json").write_text(json.dumps(bf16))
    md = build_report(evals, tmp_path / "report").markdown.read_text()
    settings = md.split("Settings per model:", 1)[1].split("##", 1)[0]
    rows = [row.split("|") for row in settings.splitlines() if row.startswith("| ")][1:]
    weights = {cells[1].strip(): cells[5].strip() for cells in rows}
    assert weights == {"teacher (reference)": "bfloat16", "kd": "float32", "sft": "float32", "switch": "float32"}


def test_model_styles_tell_twenty_methods_and_the_reference_rows_apart() -> None:
    from switch_core.reporting.plots import model_styles

    methods = [f"m{i}" for i in range(20)]
    styles = model_styles(["teacher", "student-init", "student-sft", *methods])
    looks = {(str(s["color"]), s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == 23  # no two lines alike
    assert len({str(styles[m]["color"]) for m in methods[:18]}) == 18  # a colour of its own for each of 18 methods
    assert not any(len(set(styles[m]["color"])) == 1 for m in methods)  # none of them grey, the references' colour
    assert {styles[r]["linestyle"] for r in ("teacher", "student-init", "student-sft")} == {"--"}
    assert {styles[m]["linestyle"] for m in methods} == {"-"}
