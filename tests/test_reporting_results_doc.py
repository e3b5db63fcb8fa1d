"""docs/RESULTS.md from a run folder: table numbers, bucket pooling, teacher share, reading rules, missing inputs."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from switch_core.cli import main
from switch_core.commands.results_doc import _traced, git_commit
from switch_core.config import load_config
from switch_core.data.prompts import minillm_prompt
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import write_records
from switch_core.git_info import CODE_PATHS
from switch_core.reporting.loading import ReportInputError
from switch_core.reporting.reading import ReadingInputs, reading
from switch_core.reporting.results_md import data_section, training_overlap, write_results_doc
from switch_core.reporting.scores import Score, compare, rank_of, rollout_batch_share
from switch_core.reporting.teacher_share import position_buckets, teacher_share

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (10, 20)
BENCHMARKS = ("dolly", "sinst")
BUCKET_N = {"dolly": {"[0,5]": 3, "[51,inf)": 2}, "sinst": {"[0,5]": 1, "[51,inf)": 4}}
# (model, benchmark) -> per seed (ROUGE-L, BLEU, EM, ROUGE-L of bucket [0,5], ROUGE-L of bucket [51,inf))
VALUES = {
    ("teacher", "dolly"): [(30.0, 10.0, 2.0, 40.0, 20.0), (32.0, 11.0, 4.0, 41.0, 22.0)],
    ("teacher", "sinst"): [(40.0, 20.0, 6.0, 45.0, 38.0), (41.0, 21.0, 6.0, 47.0, 39.0)],
    ("distillm", "dolly"): [(24.0, 8.0, 0.0, 30.0, 15.0), (26.0, 9.0, 2.0, 31.0, 18.0)],
    ("distillm", "sinst"): [(35.0, 15.0, 4.0, 40.0, 33.0), (34.0, 14.0, 2.0, 39.0, 32.0)],
    ("switch", "dolly"): [(25.0, 8.5, 0.0, 33.0, 14.0), (28.0, 9.5, 2.0, 34.0, 16.0)],
    ("switch", "sinst"): [(33.0, 13.0, 2.0, 38.0, 30.0), (33.5, 13.5, 2.0, 38.0, 31.0)],
}
METHODS = {"sft": "sft", "distillm": "distillm", "switch": "switch"}
MODELS = ["teacher", "student-init", "student-sft", "sft", "distillm", "switch"]


def _metrics_json(model: str, bench: str) -> dict:
    per_seed = [
        {"seed": seed, "rouge_l": r, "bleu": b, "exact_match": e, "mean_prediction_length": 20.0,
         "stopped_fraction": 1.0,
         "by_length": {"[0,5]": {"n": BUCKET_N[bench]["[0,5]"], "rouge_l": short},
                       "[51,inf)": {"n": BUCKET_N[bench]["[51,inf)"], "rouge_l": long}}}
        for seed, (r, b, e, short, long) in zip(SEEDS, VALUES[(model, bench)])
    ]

    def agg(key: str) -> dict:
        values = [s[key] for s in per_seed]
        return {"mean": statistics.mean(values), "sd": statistics.stdev(values)}

    aggregate = {k: agg(k) for k in ("rouge_l", "bleu", "exact_match")}
    aggregate["by_length"] = {
        lab: {"n": n, "mean": statistics.mean(s["by_length"][lab]["rouge_l"] for s in per_seed),
              "sd": statistics.stdev(s["by_length"][lab]["rouge_l"] for s in per_seed)}
        for lab, n in BUCKET_N[bench].items()
    }
    return {
        "benchmark": bench, "model": f"runs/x/models/{model}", "num_examples": 5, "available_examples": 500,
        "limit": 5, "protocol": {"seeds": list(SEEDS), "max_new_tokens": 128}, "per_seed": per_seed,
        "aggregate": aggregate, "throughput": {"seconds": 30.0, "generated_tokens": 600},
    }


def _trace_rows() -> list[dict]:
    """Two rollouts' aggregates over 60 positions: teacher share t/60 at position t, 4 tokens per position each."""
    return [{"step": step, "count_by_position": [4] * 60, "teacher_share_by_position": [t / 60 for t in range(60)]}
            for step in (1, 2)]


def _fake_run(root: Path) -> Path:
    run = root / "run"
    for (model, bench) in VALUES:
        path = run / "eval" / model / bench / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_metrics_json(model, bench)))
    (run / "data").mkdir(parents=True)
    (run / "data" / "data_report.json").write_text(json.dumps({
        "source": "minillm", "path": "../shared/data/dolly/dev.jsonl", "loaded": 1000, "used": 1000,
        "splits": {"train": 900, "dev": 100},
    }))
    for name, seconds, steps in [("teacher", 600.0, 56), ("distillm", 90.0, 40), ("switch", 120.0, 40)]:
        (run / "models" / name).mkdir(parents=True)
        (run / "models" / name / "train_summary.json").write_text(json.dumps({
            "run": name, "steps": steps, "best_step": steps // 2, "best": {}, "final": {}, "wall_seconds": seconds,
            "tau0": 0.25 if name == "switch" else None,
        } | ({"calibration": {"tau0": 0.25, "achieved_share": 0.5, "target_share": 0.53, "history": [
            {"tau0": 0.3, "share": 0.42}, {"tau0": 0.1, "share": 0.71}, {"tau0": 0.25, "share": 0.5}]}}
             if name == "switch" else {})))
    (run / "seqkd").mkdir()
    (run / "seqkd" / "meta.json").write_text(json.dumps({"records": 10, "generated_tokens": 1200,
                                                         "tokens_per_second": 20.0}))
    (run / "state" / "switch").mkdir(parents=True)
    (run / "state" / "switch" / "rollout_traces.jsonl").write_text("\n".join(json.dumps(r) for r in _trace_rows()))
    (run / "tracking" / "switch").mkdir(parents=True)
    log = [
        {"event": "params", "params": {"rollout.tau0_calibrated": 0.25}},
        {"event": "metrics", "step": 0, "metrics": {"calibration/tau0": 0.25, "calibration/teacher_share": 0.5}},
        {"event": "metrics", "step": 5, "metrics": {"rollout/teacher_share": 0.41, "source/ground_truth": 0.98}},
        {"event": "metrics", "step": 10, "metrics": {"rollout/teacher_share": 0.57, "source/ground_truth": 0.9}},
    ]
    (run / "tracking" / "switch" / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in log))
    return run


def _seed_values(model: str, bench: str, index: int = 0) -> list[float]:
    return [v[index] for v in VALUES[(model, bench)]]


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _average(model: str) -> list[float]:
    """Per-seed average over the benchmarks (independent of the module)."""
    return [statistics.mean(_seed_values(model, b)[i] for b in BENCHMARKS) for i in range(len(SEEDS))]


def _pooled(model: str, bucket: str) -> list[float]:
    column = 3 if bucket == "[0,5]" else 4
    n = {b: BUCKET_N[b][bucket] for b in BENCHMARKS}
    return [sum(n[b] * _seed_values(model, b, column)[i] for b in BENCHMARKS) / sum(n.values())
            for i in range(len(SEEDS))]


def _table_row(md: str, heading: str, label: str) -> str:
    section = md.split(f"## {heading}\n", 1)[1]
    return next(line for line in section.splitlines() if line.startswith(f"| {label} |"))


@pytest.fixture()
def doc(tmp_path: Path) -> tuple[str, object]:
    run = _fake_run(tmp_path)
    result = write_results_doc(
        run, tmp_path / "docs" / "RESULTS.md", commands=["switch-kd pipeline --preset dolly-smollm2"],
        commit="0123abc", models=MODELS, benchmarks=list(BENCHMARKS), methods=METHODS,
        target_share=0.53, run_label="runs/x",
    )
    return result.markdown.read_text(), result


def test_rouge_table_means_sds_average_and_best_method(doc) -> None:
    md, _ = doc
    for model in ("teacher", "distillm", "switch"):
        row = _table_row(md, "ROUGE-L", "teacher (reference)" if model == "teacher" else model)
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        assert cells[1:] == [_cell(_seed_values(model, "dolly")), _cell(_seed_values(model, "sinst")),
                             _cell(_average(model))]
    # bold = the best distillation method per column; the teacher (a reference row) is never bold
    assert _table_row(md, "ROUGE-L", "switch").split("|")[2].strip() == f"**{_cell(_seed_values('switch', 'dolly'))}**"
    assert _table_row(md, "ROUGE-L", "distillm").split("|")[3].strip().startswith("**")
    assert "**" not in _table_row(md, "ROUGE-L", "teacher (reference)")
    assert _table_row(md, "ROUGE-L", "sft") == "| sft | – | – | – |"  # expected, not evaluated yet


def test_bleu_exact_match_and_bucket_tables(doc) -> None:
    md, _ = doc
    bleu = md.split("BLEU (sacrebleu corpus, ×100):", 1)[1]
    assert f"| switch | {_cell(_seed_values('switch', 'dolly', 1))} | {_cell(_seed_values('switch', 'sinst', 1))} |" \
        in bleu
    em = md.split("Exact match (%):", 1)[1]
    assert f"| distillm | {_cell(_seed_values('distillm', 'dolly', 2))} |" in em
    header = _table_row(md, "ROUGE-L by reference length", "model")
    assert header == "| model | [0,5] (n=4) | [51,inf) (n=6) |"  # n pooled over the two benchmarks
    row = _table_row(md, "ROUGE-L by reference length", "switch")
    assert row == f"| switch | {_cell(_pooled('switch', '[0,5]'))} | {_cell(_pooled('switch', '[51,inf)'))} |"


def test_reading_rules(doc) -> None:
    md, _ = doc
    reading = md.split("## Reading against the paper\n", 1)[1]
    sw, dl = _average("switch"), _average("distillm")
    # SWITCH 1st of 2 on average, but only on dolly of the two benchmarks
    assert statistics.mean(sw) > statistics.mean(dl)
    assert "ranks **1st of 2** methods" in reading
    assert "here it does on average (the other method scores lower)" in reading
    assert "SWITCH is the best method on 1 of 2 benchmarks (dolly)." in reading
    diff = statistics.mean(sw) - statistics.mean(dl)
    pooled = math.sqrt((statistics.stdev(sw) ** 2 + statistics.stdev(dl) ** 2) / 2)
    assert abs(diff) <= pooled
    assert (f"SWITCH − DistiLLM (`distillm`), average ROUGE-L: {diff:+.2f} ROUGE-L, {abs(diff) / pooled:.1f}× the "
            f"pooled seed sd {pooled:.2f}: within seed noise.") in reading
    # the longest references: DistiLLM is ahead there, so the paper's long-response claim is not seen
    long_sw, long_dl = _pooled("switch", "[51,inf)"), _pooled("distillm", "[51,inf)")
    assert statistics.mean(long_sw) < statistics.mean(long_dl)
    assert "([51,inf) tokens, n=6 examples pooled over 2 benchmarks) SWITCH ranks **2nd of 2** (vs 1st on average)" \
        in reading
    margin_long, margin_all = statistics.mean(long_sw) - statistics.mean(long_dl), diff
    assert (f"{margin_long:+.2f} on the longest references vs {margin_all:+.2f} on average: the paper's claim that "
            "SWITCH gains most on long responses is not seen here.") in reading
    # teacher share t/60: 2/60 average over positions 0-4, (50..59)/60 average over positions 50-59 (the trace ends at 59)
    early, late = statistics.mean(t / 60 for t in range(5)), statistics.mean(t / 60 for t in range(50, 60))
    overall = statistics.mean(t / 60 for t in range(60))
    assert f"all 480 tokens of SWITCH's training rollouts: {100 * overall:.1f}% (calibration target 53%" in reading
    assert "100% of the rollouts run to the longest length in the trace (60 tokens)." in reading
    assert (f"The teacher share rises with response position: {100 * early:.1f}% at positions 0–4 vs "
            f"{100 * late:.1f}% at 50–59, as the decaying threshold") in reading
    # references and the SFT run are missing: those statements say so instead of guessing
    assert "SWITCH vs the SFT run (`sft`): cannot be assessed yet (`sft` not evaluated on every benchmark)." \
        in reading
    assert "Teacher–student gap: cannot be assessed yet" in reading
    dolly = statistics.mean(_seed_values("switch", "dolly")) - statistics.mean(_seed_values("distillm", "dolly"))
    assert f"Dolly: SWITCH − best other method (`distillm`) = {dolly:+.2f} here" in reading


def test_teacher_share_time_data_and_provenance(doc) -> None:
    md, result = doc
    assert "- code: git commit `0123abc`" in md and "switch-kd pipeline --preset dolly-smollm2" in md
    share = _table_row(md, "SWITCH teacher share", "switch")
    assert share.startswith("| switch | 0.2500 (calibrated) | 50.0% (53%) | 41.0% (step 5) → 57.0% (step 10) |")
    early = statistics.mean(t / 60 for t in range(5))
    assert f"| switch | {100 * early:.1f}% (40) |" in md  # positions 0-4: 5 positions × 8 tokens
    assert _table_row(md, "Training and evaluation time", "distill `switch`") == "| distill `switch` | 40 | 20 | 2.0 |"
    assert "| **total of the finished stages** | | | **13.5** |" in md  # (600 + 90 + 120) s
    assert "| student warm-up | not finished | | |" in md
    assert "| **total** | | **3.0** | |" in md  # 6 evaluations of 30 s
    assert ("τ0 search of `switch` on its calibration prompts (τ0 → teacher share, by τ0): 0.1 → 71.0%, 0.25 → 50.0%, "
            "0.3 → 42.0%; kept 0.25 (50.0%).") in md
    # training 810 s + SeqKD data 1200 tokens / 20 tok/s = 60 s + evaluation 180 s = 1050 s
    assert ("summed; stages that ran at the same time count in full): training 13.5 + SeqKD data 1.0 + evaluation "
            "generation 3.0 = 17.5 min (0.29 h). Not timed: data preparation, teacher set-up, student build, "
            "scoring.") in md
    assert "**the full databricks-dolly-15k training set is not available here**" in md
    assert "training used 900 examples from `../shared/data/dolly/dev.jsonl` — the 1,000 human-written rows" in md
    assert "- splits: train 900, dev 100" in md
    assert "| dolly | 5 | 500 | 5 | 10, 20 | 128 |" in md
    for png in result.plots:
        assert png.read_bytes().startswith(PNG_MAGIC) and png.parent == result.markdown.parent / "results"
    assert "![ROUGE-L by reference length](results/rouge_by_length.png)" in md
    assert "![teacher share by position](results/teacher_share_by_position.png)" in md


def test_missing_inputs_are_listed(doc) -> None:
    md, result = doc
    assert result.missing == [
        "evaluation of `student-init` on dolly, sinst",
        "evaluation of `student-sft` on dolly, sinst",
        "evaluation of `sft` on dolly, sinst",
        "models/student-sft/train_summary.json (student warm-up)",
        "models/sft/train_summary.json (distill `sft`)",
        "analysis/gate_profile.json (the warmed-up student's JSD profile, gate-profile)",
    ]
    assert all(f"- {m}" in md.split("## Data", 1)[0] for m in result.missing)


def test_a_folder_without_any_output_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    for folder in (tmp_path / "no-such-run", tmp_path / "empty-run"):
        with pytest.raises(ReportInputError, match=f"no run outputs in {folder}.*--run-dir; nothing written"):
            write_results_doc(folder, tmp_path / "RESULTS.md", commands=["dvc repro"], commit=None)
    assert not (tmp_path / "RESULTS.md").exists()
    assert main(["results-doc", "--set", f"run_dir={tmp_path / 'empty-run'}", "--out", str(tmp_path / "R.md")]) == 2
    assert not (tmp_path / "R.md").exists()


def test_a_study_with_only_its_data_split_gives_a_document_of_missing_parts(tmp_path: Path) -> None:
    run = tmp_path / "started"
    (run / "data").mkdir(parents=True)
    (run / "data" / "data_report.json").write_text(json.dumps({"loaded": 10, "used": 10, "splits": {"train": 8}}))
    result = write_results_doc(run, tmp_path / "RESULTS.md", commands=["dvc repro"], commit=None,
                               models=MODELS, benchmarks=list(BENCHMARKS), methods=METHODS)
    md = result.markdown.read_text()
    assert result.plots == [] and not list((tmp_path / "results").glob("*.png"))
    assert result.missing[0] == "evaluation of `teacher` on dolly, sinst" and "data/data_report.json" not in md
    assert "git commit unknown" in md and "| dolly | not evaluated yet | | | | |" in md
    assert "Ranking over methods: cannot be assessed yet (0 method(s)" in md
    assert "Teacher share by position: no rollout trace of the SWITCH run yet." in md


def test_a_switch_run_whose_strategy_writes_no_trace_is_not_missing_one(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    (run / "state" / "switch" / "rollout_traces.jsonl").unlink()
    kwargs = {"commands": [], "commit": None, "models": MODELS, "benchmarks": list(BENCHMARKS), "methods": METHODS}
    expected = write_results_doc(run, tmp_path / "A.md", **kwargs)
    assert "state/switch/rollout_traces.jsonl (SWITCH rollouts of `switch`)" in expected.missing
    student = write_results_doc(run, tmp_path / "B.md", traced=[], **kwargs)
    assert not any("rollout_traces" in m for m in student.missing)
    # the command asks the configuration: rollout.strategy student writes none (the training loop's rule)
    config = load_config(None, overrides={"runs": {
        "switch": {"method": "switch"}, "switch-student": {"method": "switch", "overrides": {"rollout.strategy": "student"}},
        "distillm": {"method": "distillm"}}})
    assert _traced(config) == ["switch"]


def test_a_metrics_file_without_per_seed_values_is_an_error_naming_it(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    bad = run / "eval" / "switch" / "dolly" / "metrics.json"
    bad.write_text(json.dumps({"aggregate": {}}))
    with pytest.raises(ReportInputError, match=str(bad)):
        write_results_doc(run, tmp_path / "R.md", commands=[], commit=None)


def test_compare_and_rank_rules() -> None:
    a, b = Score(30.0, 1.0, 5), Score(27.0, 1.0, 5)
    assert compare(a, b).verdict == "clear" and compare(a, b).diff == 3.0  # 3 > 2 × 1
    assert compare(Score(28.5, 1.0, 5), b).verdict == "small"  # 1 < 1.5 <= 2
    assert compare(Score(27.5, 0.6, 5), Score(27.0, 0.8, 5)).verdict == "within seed noise"  # 0.5 <= sqrt(0.5)
    assert compare(Score(1.0, math.nan, 1), b).verdict == "no seed sd"
    scores = {"a": Score(2.0, 0.0, 2), "b": Score(3.0, 0.0, 2), "c": Score(3.0, 0.0, 2)}
    assert rank_of(scores, "b") == (1, 3) and rank_of(scores, "c") == (1, 3) and rank_of(scores, "a") == (3, 3)


def test_cli_writes_the_document_from_the_configuration(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    params = tmp_path / "params.yaml"
    runs = {name: {"method": method} for name, method in METHODS.items()}
    runs["switch"]["overrides"] = {"rollout.tau0": 0.3, "methods.switch.loss": "fkl"}
    params.write_text(yaml.safe_dump({
        "run_dir": "run", "runs": runs, "eval": {"benchmarks": list(BENCHMARKS)},
        "rollout": {"max_new_tokens": 64},
    }))
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["results-doc", "--params", str(params), "--out", str(out), "--commit", "feedbeef",
                 "--note", "ran on a shared machine"]) == 0
    md = out.read_text()
    assert "git commit `feedbeef`" in md and "(Reconstructed from the run folder" in md
    assert "Operator's notes (given with `--note`, not generated):\n\n- ran on a shared machine\n" in md
    assert "switch-kd results-doc --out" in md
    assert "| switch | 0.2500 (calibrated) | 50.0% (53%) |" in md  # target from rollout.target_teacher_share
    assert "evaluation of `student-init` on dolly, sinst" in md  # expected models come from the configuration
    # the Methods table states the settings in force, the run's overrides applied
    assert _table_row(md, "Methods", "`switch`") == (
        "| `switch` | switch | student-sft | fresh SWITCH rollouts (the teacher writes a token when JSD > τ_t = "
        "τ0·exp(−0.1·t); τ0 = 0.3) of up to 64 new tokens | forward KL KL(p‖q) | lr 0.0005, batch 8, 1 epoch | "
        "best dev ROUGE-L on 32 dev examples, checked at each epoch end and at the last step | 6.0% |")  # (5·0.02 + 5·0.1) / 10
    assert "| skew KL KL(p‖αp+(1−α)q) (α = 0.1) |" in _table_row(md, "Methods", "`distillm`")
    # the default configuration trains the teacher and warms the student up: their stages head the table
    assert _table_row(md, "Methods", "teacher SFT").startswith("| teacher SFT | sft | teacher-base | the training")
    assert "| best dev loss on" in _table_row(md, "Methods", "student warm-up")
    assert md.startswith("# Results\n")  # no --preset: the plain title


def test_position_buckets_hand_case() -> None:
    # 120 positions, one token each; the teacher emits positions 3, 4 and 100-119
    teacher = [1.0 if p in (3, 4) or p >= 100 else 0.0 for p in range(120)]
    trace = pd.DataFrame({"position": range(120), "teacher": teacher, "count": [1.0] * 120})
    assert position_buckets(trace) == [("0–4", 2 / 5, 5), ("5–9", 0.0, 5), ("10–19", 0.0, 10), ("20–49", 0.0, 30),
                                       ("50–99", 0.0, 50), ("100–119", 1.0, 20)]
    # rollouts of 24 tokens: the last bucket is cut at position 23, as the gate profile's "20–23"
    short = trace[trace["position"] < 24]
    assert [label for label, _, _ in position_buckets(short)] == ["0–4", "5–9", "10–19", "20–23"]
    assert teacher_share(trace) == (22 / 120, 120) and teacher_share(trace, 3, 4) == (1.0, 2)
    assert teacher_share(trace, 98) == (20 / 22, 22)  # open-ended range
    share, tokens = teacher_share(trace, 200)
    assert math.isnan(share) and tokens == 0


def test_a_tau0_above_ln2_is_read_as_student_only_first_positions(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    summary = run / "models" / "switch" / "train_summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"tau0": 44.36}))
    kwargs = {"commands": ["dvc repro"], "commit": "abc", "methods": {"switch": "switch", "distillm": "distillm"},
              "target_share": 0.53}
    md = write_results_doc(run, tmp_path / "a.md", decays={"switch": 0.1}, **kwargs).markdown.read_text()
    assert "τ0 = 44.4 exceeds ln 2, the largest JSD, so the threshold cannot be crossed at response positions 0–41 " \
           "(λ = 0.1)" in md
    # 42 student-only positions of the 60 in the trace (>= a quarter): not the paper's regime
    assert "So this run tests a student-written opening followed by mostly teacher-written tokens" in md
    unknown = write_results_doc(run, tmp_path / "b.md", **kwargs).markdown.read_text()  # λ unknown: no statement
    assert "exceeds ln 2" not in unknown and "student-written opening" not in unknown
    short = write_results_doc(run, tmp_path / "c.md", decays={"switch": 2.0}, **kwargs).markdown.read_text()
    assert "response positions 0–2 (λ = 2)" in short and "student-written opening" not in short  # 3 < 60 / 4


def test_share_of_rollouts_reaching_the_longest_length_hand_case(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    # 4 rollouts: all reach position 9, one reaches position 19 (the longest)
    trace = {"step": 1, "count_by_position": [4] * 10 + [1] * 10, "teacher_share_by_position": [0.5] * 20}
    (run / "state" / "switch" / "rollout_traces.jsonl").write_text(json.dumps(trace) + "\n")
    md = write_results_doc(run, tmp_path / "c.md", commands=["x"], commit="abc",
                           methods={"switch": "switch"}).markdown.read_text()
    assert "25% of the rollouts run to the longest length in the trace (20 tokens)." in md


def test_training_overlap_counts_evaluated_prompts_found_in_the_training_split(tmp_path: Path) -> None:
    train = [InstructionRecord(id=f"t{i}", instruction=f"Name a colour number {i}.", input="", references=("red",))
             for i in range(3)]
    write_records(train, tmp_path / "data" / "train.jsonl")
    shared = minillm_prompt("Name a colour number 1.", "")
    rows = [{"id": rid, "seed": seed, "prompt": prompt}
            for seed in (10, 20)  # two seeds: the same prompts, counted once
            for rid, prompt in (("a", shared), ("b", minillm_prompt("Name a colour number 1.", "in French")),
                                ("c", minillm_prompt("Something else.", "")))]
    gen = tmp_path / "eval" / "student" / "dolly" / "generations.jsonl"
    gen.parent.mkdir(parents=True)
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert training_overlap(tmp_path, ["dolly", "vicuna"], ["teacher", "student"]) == [("dolly", 1, 3)]
    assert training_overlap(tmp_path / "nowhere", ["dolly"], ["student"]) == []


def test_rollout_batch_share_weights_each_logging_window_by_its_steps() -> None:
    # windows of 5, 5 and 2 steps (a last, shorter window); dataset-example fractions 1.0, 0.6, 0.0
    log = pd.DataFrame({"step": [5, 5, 10, 10, 12, 12], "metric": ["source/ground_truth", "train/loss"] * 2
                        + ["source/rollout_replay", "train/loss"], "value": [1.0, 2.0, 0.6, 1.5, 1.0, 1.0]})
    assert rollout_batch_share(log) == pytest.approx((5 * 0.0 + 5 * 0.4 + 2 * 1.0) / 12)
    assert rollout_batch_share(log[log["metric"] == "train/loss"]) is None and rollout_batch_share(None) is None


def _inputs(averages: dict[str, Score], **kwargs) -> ReadingInputs:
    methods = list(averages)
    method_of = {m: ("switch" if m.startswith("switch") else m) for m in methods}
    return ReadingInputs("switch", methods, method_of, averages, {}, {}, ["dolly"], {}, 0.53, **kwargs)


def test_switch_variants_are_ranked_against_the_baselines_not_each_other() -> None:
    averages = {"sft": Score(10.0, 0.5, 5), "distillm": Score(12.0, 0.5, 5), "switch": Score(9.0, 0.5, 5),
                "switch-ln2": Score(13.0, 0.5, 5)}
    lines = reading(_inputs(averages, tau0={"switch-ln2": 0.6931}, decay={"switch-ln2": 0.019}))
    assert lines[0].startswith("Overall, SWITCH (`switch`) ranks **3rd of 3** methods (SWITCH and the baselines)")
    # the variant is not a baseline; DistiLLM is clearly ahead (2 / 0.5 > 2), SFT within twice the seed sd
    assert lines[1].endswith("**here it does not beat them all**: `distillm` scores clearly higher; `sft` scores "
                             "higher by less than that.")
    variant = next(line for line in lines if line.startswith("SWITCH variant"))
    assert variant == (
        "SWITCH variant `switch-ln2` (τ0 = 0.6931, λ = 0.019): average ROUGE-L 13.00 ± 0.50, **1st of 3** against "
        "the baselines; `switch-ln2` − `switch`: +4.00 ROUGE-L, 8.0× the pooled seed sd 0.50: clear; `switch-ln2` − "
        "best baseline `distillm`: +1.00 ROUGE-L, 2.0× the pooled seed sd 0.50: small.")
    alike = dict(averages, switch=Score(12.9, 0.5, 5))
    variant = next(x for x in reading(_inputs(alike)) if x.startswith("SWITCH variant"))
    assert "+0.10 ROUGE-L, 0.2× the pooled seed sd 0.50: within seed noise (the two SWITCH settings score alike)" in variant


def test_a_tie_for_the_best_average_shares_the_rank_in_every_statement() -> None:
    averages = {"sft": Score(12.0, 0.5, 5), "distillm": Score(10.0, 0.5, 5), "switch": Score(12.0, 0.5, 5)}
    lines = reading(_inputs(averages))
    assert lines[0].startswith("Overall, SWITCH (`switch`) ranks **tied 1st of 3** methods (tied with `sft`) "
                               "(SWITCH and the baselines) by the average ROUGE-L over 1 benchmarks (12.00 ± 0.50); "
                               "it shares the best average.")
    assert "the best method is" not in lines[0]
    assert lines[1].endswith("**here it does not beat them all**: `sft` ties with it.")
    ahead = reading(_inputs(dict(averages, switch=Score(9.0, 0.5, 5), distillm=Score(12.0, 0.5, 5))))
    assert "ranks **3rd of 3** methods" in ahead[0]
    assert "the best methods are `sft`, `distillm`, tied (12.00 ± 0.50)" in ahead[0]


def test_a_best_method_that_hardly_trained_on_rollouts_is_said_to_lead_by_its_loss() -> None:
    averages = {"sft": Score(10.0, 0.5, 5), "distillm": Score(12.0, 0.5, 5), "switch": Score(9.0, 0.5, 5)}
    lines = reading(_inputs(averages, rollout_share={"distillm": 0.025, "switch": 1.0}))
    assert lines[1] == ("The best method `distillm` trained on rollouts in only 2.5% of its steps (its training log), "
                        "almost only on the reference responses: its lead here does not come from learning on "
                        "student-generated outputs.")
    for shares in ({"distillm": 0.1}, {}):  # at least 10%, or no log: no such statement
        assert not any(x.startswith("The best method") for x in reading(_inputs(averages, rollout_share=shares)))
    best_sft = dict(averages, sft=Score(13.0, 0.5, 5))  # SFT never trains on rollouts: nothing to say
    assert not any(x.startswith("The best method") for x in reading(_inputs(best_sft, rollout_share={"sft": 0.0})))


def test_a_long_reference_margin_within_seed_noise_of_the_average_one_is_not_read_as_a_direction() -> None:
    averages = {"distillm": Score(8.20, 0.46, 5), "switch": Score(6.53, 0.05, 5)}
    long = {"distillm": {"[51,inf)": (Score(10.21, 0.41, 5), 97)}, "switch": {"[51,inf)": (Score(8.57, 0.04, 5), 97)}}
    r = ReadingInputs("switch", ["distillm", "switch"], {"distillm": "distillm", "switch": "switch"}, averages, {},
                      long, ["dolly"], {}, 0.53)
    text = next(line for line in reading(r) if line.startswith("Its margin"))
    # -1.64 vs -1.67: 0.03 apart, below the pooled seed sds (0.29 and 0.33)
    assert text == ("Its margin over the best other method is -1.64 on the longest references vs -1.67 on average: the "
                    "two margins differ by no more than the seed sd, so SWITCH does no better on long references than "
                    "overall: the paper's claim that it gains most on long responses is not seen here.")
    wider = dict(long, switch={"[51,inf)": (Score(9.80, 0.04, 5), 97)})  # margin -0.41, well above -1.67
    r = ReadingInputs("switch", ["distillm", "switch"], r.method_of, averages, {}, wider, ["dolly"], {}, 0.53)
    assert "the paper's claim holds only in direction" in next(x for x in reading(r) if x.startswith("Its margin"))


def test_zero_exact_match_absent_benchmarks_title_and_generating_commit(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    for path in run.glob("eval/*/*/metrics.json"):
        data = json.loads(path.read_text())
        for row in data["per_seed"]:
            row["exact_match"] = 0.0
        path.write_text(json.dumps(data))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_dir": "run", "eval": {"benchmarks": list(BENCHMARKS)},
                                      "runs": {name: {"method": method} for name, method in METHODS.items()}}))
    preset = tmp_path / "presets" / "mystudy.yaml"
    preset.parent.mkdir()
    preset.write_text("{}\n")
    out = tmp_path / "R.md"
    assert main(["results-doc", "--params", str(params), "--preset", "mystudy", "--out", str(out),
                 "--commit", "feedbeef"]) == 0
    md = out.read_text()
    assert md.startswith("# Results: the mystudy study\n")
    assert "Exact match is 0 for every model and benchmark" in md
    assert ("- not evaluated: self-inst (SelfInst), vicuna (Vicuna), uinst (UnNI) (of the paper's five benchmarks"
            in md)
    # the document names the code that wrote it (this checkout) besides the run's commit
    assert "- this document was generated with the code at `" in md and "`git diff feedbeef " in md
    doc = write_results_doc(run, tmp_path / "S.md", commands=[], commit="abc1234", generated_with="def5678")
    assert ("- this document was generated with the code at `def5678`; `git diff abc1234 def5678` shows what changed "
            "since the run") in doc.markdown.read_text()


def test_provenance_of_a_checkout_with_uncommitted_changes_compares_bare_shas(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    doc = write_results_doc(run, tmp_path / "S.md", commands=[], commit="abc1234 + uncommitted changes",
                            generated_with="def5678 + uncommitted changes")
    md = doc.markdown.read_text()
    assert "- code: git commit `abc1234` with uncommitted changes (not recorded)\n" in md
    assert ("- this document was generated with the code at `def5678` with uncommitted changes; `git diff abc1234 "
            "def5678` shows what changed since the run (committed changes only)\n") in md
    assert "+ uncommitted changes" not in md
    same = write_results_doc(run, tmp_path / "T.md", commands=[], commit="abc1234 + uncommitted changes",
                             generated_with="abc1234").markdown.read_text()
    assert "- this document was generated with the code at the same commit `abc1234` without uncommitted changes\n" in same
    assert "git diff" not in same


def test_response_length_table_and_runs_that_never_stop(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    lengths = {("switch", "dolly"): (128.0, 128.0), ("switch", "sinst"): (128.0, 128.0),
               ("distillm", "dolly"): (40.0, 50.0), ("distillm", "sinst"): (60.0, 70.0)}
    stops = {("switch", "dolly"): (0.0, 0.0), ("switch", "sinst"): (0.0, 0.0),
             ("distillm", "dolly"): (0.8, 0.6), ("distillm", "sinst"): (0.4, 0.6)}
    for (model, bench), per_seed in lengths.items():
        path = run / "eval" / model / bench / "metrics.json"
        data = json.loads(path.read_text())
        for i, row in enumerate(data["per_seed"]):
            row["mean_prediction_length"], row["stopped_fraction"] = per_seed[i], stops[(model, bench)][i]
        path.write_text(json.dumps(data))
    md = write_results_doc(run, tmp_path / "L.md", commands=[], commit=None, benchmarks=list(BENCHMARKS),
                           methods={"distillm": "distillm", "switch": "switch"}).markdown.read_text()
    # per seed: the mean over the two benchmarks, then mean ± sd over the seeds
    assert _table_row(md, "Response length", "distillm") == (
        f"| distillm | {_cell([50.0, 60.0])} | {_cell([60.0, 60.0])} |")
    assert _table_row(md, "Response length", "switch") == "| switch | 128.00 ± 0.00 | 0.00 ± 0.00 |"
    assert ("At evaluation, `switch` ends fewer than 5.0% of its answers with a stop token (0.0%): nearly every answer "
            "runs to the new-token cap, while the other distillation runs end 60% of theirs") in md
    older = tmp_path / "older"  # metrics files without the length keys: no table, no statement
    shutil.copytree(run, older)
    for path in older.glob("eval/*/*/metrics.json"):
        data = json.loads(path.read_text())
        for row in data["per_seed"]:
            del row["stopped_fraction"]
        path.write_text(json.dumps(data))
    md = write_results_doc(older, tmp_path / "O.md", commands=[], commit=None).markdown.read_text()
    assert "## Response length" not in md and "of its answers with a stop token" not in md


def _checkout(root: Path, files: dict[str, str]) -> str:
    """A git repository at ``root`` with ``files`` (relative path -> text) committed; returns the commit's sha."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return git("rev-parse", "HEAD").strip()


def test_git_commit_marks_uncommitted_changes_only_under_the_given_paths(tmp_path: Path) -> None:
    sha = _checkout(tmp_path, {"code/a.py": "x = 1\n", "RESULTS.md": "old\n"})
    assert git_commit(tmp_path) == sha
    (tmp_path / "RESULTS.md").write_text("new\n")  # the document being rewritten is not a change of the code
    assert git_commit(tmp_path, ("code",)) == sha and git_commit(tmp_path) == f"{sha} + uncommitted changes"
    (tmp_path / "code" / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ("code",)) == f"{sha} + uncommitted changes"
    assert git_commit(tmp_path / "not-a-checkout") is None


def test_a_study_checkout_with_its_params_and_lock_rewritten_is_clean_code(tmp_path: Path) -> None:
    """A study applies its preset to params.yaml and records its stages in dvc.lock: that is not a code change."""
    sha = _checkout(tmp_path, dict.fromkeys(("params.yaml", "dvc.lock", "a.py"), "old\n"))
    (tmp_path / "params.yaml").write_text("new\n")
    (tmp_path / "dvc.lock").write_text("new\n")
    assert git_commit(tmp_path, CODE_PATHS) == sha and git_commit(tmp_path) == f"{sha} + uncommitted changes"
    (tmp_path / "a.py").write_text("new\n")
    assert git_commit(tmp_path, CODE_PATHS) == f"{sha} + uncommitted changes"


def test_wall_times_are_read_from_a_timings_file_or_shown_as_not_recorded(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    for name in ("distillm", "switch"):  # the wall time moved out of train_summary.json
        summary = run / "models" / name / "train_summary.json"
        summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items()
                                       if k != "wall_seconds"}))
    (run / "state" / "switch").mkdir(parents=True, exist_ok=True)  # training timings live with the run's state
    (run / "state" / "switch" / "timings.json").write_text(json.dumps({"wall_seconds": 300.0}))
    md = write_results_doc(run, tmp_path / "T.md", commands=[], commit=None,
                           methods={"distillm": "distillm", "switch": "switch"}).markdown.read_text()
    assert _table_row(md, "Training and evaluation time", "distill `switch`") == "| distill `switch` | 40 | 20 | 5.0 |"
    assert _table_row(md, "Training and evaluation time", "distill `distillm`") == (
        "| distill `distillm` | 40 | 20 | n/a |")
    assert "| **total of the finished stages** | | | **15.0** |" in md  # (600 + 300) s; distillm's time unknown
    for path in run.glob("eval/distillm/*/metrics.json"):  # the generation times moved out of metrics.json too
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "throughput"}))
    (run / "timings" / "eval" / "switch" / "dolly").mkdir(parents=True)  # evaluation timings: the timings/ tree
    (run / "timings" / "eval" / "switch" / "dolly" / "timings.json").write_text(json.dumps({"throughput": {
        "seconds": 90.0, "generated_tokens": 900}}))
    md = write_results_doc(run, tmp_path / "T.md", commands=[], commit=None,
                           methods={"distillm": "distillm", "switch": "switch"}).markdown.read_text()
    assert "| distillm | 2 | n/a | n/a |" in md
    assert "| switch | 2 | 2.0 | 12 |" in md  # (90 + 30) s, (900 + 600) tokens
    assert "| **total** | | **3.0** | |" in md  # teacher 60 s + switch 120 s


def test_data_section_of_the_embedded_suite_names_no_path_and_no_dolly_file() -> None:
    lines = data_section({"source": "embedded", "path": None, "loaded": 100, "used": 100,
                          "splits": {"train": 80, "dev": 20}})
    assert lines[0] == "- source: `embedded`; 100 records loaded, 100 used"
    assert lines[2] == ("- training used 80 examples of the embedded procedural suite, not the paper's Dolly data "
                        "(about 14,000 training examples): the scores are not comparable to the paper's.")
    assert not any("None" in line or "``" in line or "databricks-dolly-15k" in line for line in lines)
    other = data_section({"source": "minillm", "path": "data/alpaca.jsonl", "loaded": 9, "used": 9,
                          "splits": {"train": 8}})
    assert other == ["- source: `minillm` `data/alpaca.jsonl`; 9 records loaded, 9 used", "- splits: train 8"]


def test_an_evaluation_older_than_its_model_is_flagged_stale(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    kwargs = {"commands": [], "commit": None, "models": MODELS, "benchmarks": list(BENCHMARKS), "methods": METHODS}
    evaluated_at = (run / "eval" / "switch" / "dolly" / "metrics.json").stat().st_mtime_ns
    for model, offset in (("switch", 10**9), ("distillm", -(10**9))):  # switch retrained 1 s after its evaluation
        weights = run / "models" / model / "model.safetensors"
        weights.write_bytes(b"w")
        os.utime(weights, ns=(evaluated_at + offset, evaluated_at + offset))
    md = write_results_doc(run, tmp_path / "A.md", **kwargs).markdown.read_text()
    status = md.split("## Status\n", 1)[1].split("## Data", 1)[0]
    assert ("Stale (the model files were written after its evaluation, e.g. retrained: these scores are of an earlier "
            "model; rerun `switch-kd evaluate` for it):\n\n- `switch` on dolly, sinst\n") in status
    assert "`distillm`" not in status
    (run / "models" / "switch" / "model.safetensors").unlink()
    md = write_results_doc(run, tmp_path / "B.md", **kwargs).markdown.read_text()
    assert "Stale" not in md.split("## Status\n", 1)[1].split("## Data", 1)[0]
