"""docs/RESULTS.md generated from a run's outputs: tables, plots and a rule-based reading against the paper's claims.

Reads, inside a run folder (:class:`~switch_core.layout.RunLayout`), every piece optional:

- ``eval/<model>/<benchmark>/metrics.json`` (:mod:`switch_core.evaluation.evaluate`): per-seed ROUGE-L, BLEU, exact
  match and ROUGE-L by reference-length bucket;
- ``data/data_report.json`` (``prepare-data``): loaded records and split sizes;
- ``models/<name>/train_summary.json`` (the training loop): steps, best step, τ0 and its search; the wall seconds from
  ``state/<name>/timings.json`` (older summaries carry ``wall_seconds`` themselves);
- ``seqkd/meta.json`` (``seqkd-data``): the teacher's generated tokens; its tokens/s from ``timings/seqkd/timings.json``;
- ``state/<run>/rollout_traces.jsonl`` (the training loop): teacher share by response position of SWITCH rollouts;
- ``tracking/<run>/metrics.jsonl`` (the JSONL event log): ``rollout/teacher_share`` per logging window and the τ0
  calibration (``calibration/tau0``, ``calibration/teacher_share``).

Every number is computed here from the per-seed values: a score is the mean and sample sd (ddof 1) over generation
seeds (method.md §5.4–5.5); the average over benchmarks is taken per seed first, so it has a seed sd too; ROUGE-L of a
length bucket pooled over benchmarks is, per seed, the example-weighted mean of the benchmarks' bucket means. What is
missing (a study still running) is listed, never fatal. The reading (:func:`reading`) states, by fixed rules, where
SWITCH stands against the paper's claims (method.md §0, §1.1, §2): it beats every baseline, especially on long
responses, and the teacher intervenes more as the response goes on (τ_t = τ0·exp(−λt)).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from switch_core.atomic import atomic_write_text
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.evaluation.evaluate import GENERATIONS_FILE, METRICS_FILE
from switch_core.evaluation.method_text import MethodDescription, methods_table
from switch_core.evaluation.metrics import mean_and_sd
from switch_core.evaluation.report import (
    ReportInputError,
    collect_metrics,
    plot_rouge_by_length,
    plot_teacher_share,
    read_training_log,
    save_png,
    teacher_share_by_position,
)
from switch_core.layout import RunLayout

REFERENCE_MODELS: tuple[str, ...] = ("teacher", "student-init", "student-sft")
"""Reference rows: the teacher, the untrained (pruned) student and the warmed-up student."""
REFERENCE_LABELS = {"teacher": "teacher (reference)", "student-init": "student-init (untrained student)",
                    "student-sft": "student-sft (warmed-up student)"}
TRAINED_STAGES: tuple[tuple[str, str], ...] = (("teacher", "teacher SFT"), ("student-sft", "student warm-up (SFT)"))
PAPER_TEACHER_SHARE = 0.53
"""Teacher share of SWITCH rollouts at the paper's best decay 1/10 (method.md §1.1 item 4, secondary source)."""
PAPER_DOLLY_TRAIN = 14_000
"""Training examples of the paper's Dolly split (~14k of databricks-dolly-15k; method.md §5.1)."""
PAPER_MAX_NEW_TOKENS = 256
"""Response tokens at evaluation in the protocol (method.md §5.3)."""
PAPER_DOLLY_NUMBERS = (26.2, 24.9)
"""The only paper numbers found: SWITCH vs an unnamed baseline, Dolly ROUGE-L (method.md §3, secondary source)."""
PAPER_BENCHMARKS: dict[str, str] = {"dolly": "Dolly", "self-inst": "SelfInst", "vicuna": "Vicuna", "sinst": "S-NI",
                                    "uinst": "UnNI"}
"""The paper's five evaluation sets, by benchmark name (method.md §5.1)."""
POSITION_EDGES: tuple[int, ...] = (5, 10, 20, 50, 100)
"""Response-position buckets of the teacher-share table: [0,4], [5,9], [10,19], [20,49], [50,99], [100,∞)."""
ON_POLICY_METHODS: frozenset[str] = frozenset({"imitkd", "gkd", "distillm", "switch", "minillm"})
"""Methods that (may) train on rollouts; a low logged rollout share is worth a statement for them."""
RARE_STOP_RATE = 0.05
"""Below this share of answers ended by a stop token, a run is said to (almost) never stop."""
MIN_BUCKET_TOKENS = 20
"""A position bucket with fewer rollout tokens is too thin for the rise statement."""


class ResultsDocError(ValueError):
    """A run output that exists but cannot be read (not JSON, missing per-seed values); names the file."""


@dataclass(frozen=True)
class Score:
    """Mean and sample sd over generation seeds (sd NaN with fewer than two seeds)."""

    mean: float
    sd: float
    seeds: int

    def cell(self) -> str:
        """``"mean ± sd"`` with two decimals (``"mean"`` alone when there is no sd)."""
        return f"{self.mean:.2f}" if math.isnan(self.sd) else f"{self.mean:.2f} ± {self.sd:.2f}"


@dataclass(frozen=True)
class Comparison:
    """``a − b`` of two scores against their pooled seed sd ``sqrt((sd_a² + sd_b²) / 2)``.

    ``verdict``: ``"clear"`` when ``|diff| > 2·pooled``, ``"within seed noise"`` when ``|diff| <= pooled``,
    ``"small"`` in between, ``"no seed sd"`` when the pooled sd is 0 or unknown.
    """

    diff: float
    pooled_sd: float
    verdict: str

    def text(self) -> str:
        """``"+1.20 ROUGE-L, 2.4× the pooled seed sd 0.50: clear"``."""
        if self.verdict == "no seed sd":
            return f"{self.diff:+.2f} ROUGE-L (no seed sd to compare with)"
        return (f"{self.diff:+.2f} ROUGE-L, {abs(self.diff) / self.pooled_sd:.1f}× the pooled seed sd "
                f"{self.pooled_sd:.2f}: {self.verdict}")


@dataclass
class RunOutputs:
    """What :func:`load_run_outputs` found in a run folder; absent pieces are None or missing keys."""

    run_dir: Path
    evaluations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data_report: dict[str, Any] | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    seqkd_meta: dict[str, Any] | None = None
    traces: dict[str, pd.DataFrame] = field(default_factory=dict)
    logs: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class ResultsDoc:
    """What :func:`write_results_doc` wrote, and the missing inputs it reported."""

    markdown: Path
    plots: list[Path]
    missing: list[str]


# ----------------------------------------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsDocError(f"{path}: not readable as JSON ({err}); rerun the stage that writes it") from None
    if not isinstance(data, dict):
        raise ResultsDocError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_metrics(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    per_seed = data.get("per_seed")
    ok = isinstance(per_seed, list) and per_seed and all(
        isinstance(s, dict) and {"seed", "rouge_l", "bleu", "exact_match", "by_length"} <= set(s) for s in per_seed
    )
    if not ok:
        raise ResultsDocError(
            f"{path}: no per_seed list with seed, rouge_l, bleu, exact_match and by_length for every seed; it was "
            "not written by `switch-kd evaluate` (rerun that evaluation)"
        )
    return data


def load_run_outputs(run_dir: str | Path, runs: Sequence[str] = ()) -> RunOutputs:
    """Read every output the document uses from a run folder (module docstring); nothing is required.

    Args:
        run_dir: the run folder (``run_dir`` of the configuration).
        runs: distillation run names whose rollout trace and training log are read (besides any other run that has a
            trace file).

    Returns:
        The :class:`RunOutputs`; evaluations keyed ``[model][benchmark]``.

    Raises:
        ResultsDocError: a file that exists but is not valid JSON, or a metrics.json without per-seed values.
        switch_core.evaluation.report.ReportInputError: a trace or log line that is not JSON (names file and line).
    """
    layout = RunLayout(Path(run_dir))
    out = RunOutputs(layout.root)
    for path in sorted(layout.root.glob(f"eval/*/*/{METRICS_FILE}")):
        timings = layout.timings(path.parent) / "timings.json"  # generation seconds, kept out of metrics.json
        out.evaluations.setdefault(path.parent.parent.name, {})[path.parent.name] = _check_metrics(
            path, _read_json(path)
        ) | ({"throughput": _read_json(timings)["throughput"]} if timings.is_file() else {})
    if layout.data_report.is_file():
        out.data_report = _read_json(layout.data_report)
    for path in sorted(layout.root.glob("models/*/train_summary.json")):
        timings = layout.state(path.parent.name) / "timings.json"  # wall seconds, kept out of the summary
        out.summaries[path.parent.name] = _read_json(path) | (_read_json(timings) if timings.is_file() else {})
    if layout.seqkd_meta.is_file():
        timings = layout.timings(layout.seqkd_meta.parent) / "timings.json"
        out.seqkd_meta = _read_json(layout.seqkd_meta) | (_read_json(timings) if timings.is_file() else {})
    traced = {p.parent.name for p in layout.root.glob("state/*/rollout_traces.jsonl")}
    for name in list(dict.fromkeys([*runs, *sorted(traced)])):
        trace = layout.state(name) / "rollout_traces.jsonl"
        if trace.is_file():
            out.traces[name] = teacher_share_by_position(trace)
        log = layout.root / "tracking" / name / "metrics.jsonl"
        if log.is_file():
            out.logs[name] = read_training_log(log)
    return out


# ------------------------------------------------------------------------------------------------------------ scores


def _score(values: Sequence[float]) -> Score:
    mean, sd = mean_and_sd(list(values))
    return Score(mean, sd if len(values) > 1 else math.nan, len(values))


def _per_seed(metrics: dict[str, Any], key: str) -> dict[int, float]:
    return {int(s["seed"]): float(s[key]) for s in metrics["per_seed"]}


def benchmark_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], metric: str = "rouge_l"
                     ) -> dict[str, dict[str, Score]]:
    """``{model: {benchmark: Score}}`` of one metric (``rouge_l``, ``bleu`` or ``exact_match``, 0–100) over seeds.

    Args:
        evaluations: ``RunOutputs.evaluations``.
        metric: a per-seed key of metrics.json.
    """
    return {
        model: {bench: _score(list(_per_seed(m, metric).values())) for bench, m in benches.items()}
        for model, benches in evaluations.items()
    }


def average_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], benchmarks: Sequence[str],
                   metric: str = "rouge_l") -> dict[str, Score]:
    """Average over ``benchmarks`` of a metric, per seed, then mean ± sd over seeds.

    Only models evaluated on every one of ``benchmarks`` get an average; the seeds are those all of its benchmarks
    share (the protocol's seeds).

    Returns:
        ``{model: Score}`` (models without every benchmark, or with no seed in common, are left out).
    """
    out: dict[str, Score] = {}
    for model, benches in evaluations.items():
        if not benchmarks or any(b not in benches for b in benchmarks):
            continue
        per_bench = [_per_seed(benches[b], metric) for b in benchmarks]
        seeds = sorted(set.intersection(*(set(p) for p in per_bench)))
        if seeds:
            out[model] = _score([sum(p[s] for p in per_bench) / len(per_bench) for s in seeds])
    return out


def _bucket_low(label: str) -> int:
    return int(label[1:].split(",")[0])


def bucket_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], benchmarks: Sequence[str]
                  ) -> dict[str, dict[str, tuple[Score, int]]]:
    """ROUGE-L by reference-length bucket pooled over ``benchmarks``: ``{model: {bucket: (Score, n)}}``.

    Per seed, a bucket's pooled ROUGE-L is ``Σ_b n_b·r_b / Σ_b n_b`` over the benchmarks that have examples in it
    (``n_b`` examples of benchmark ``b`` in the bucket, ``r_b`` their mean ROUGE-L); then mean ± sd over the seeds all
    benchmarks share. Only models evaluated on every one of ``benchmarks`` are included. Buckets are sorted by length.
    """
    out: dict[str, dict[str, tuple[Score, int]]] = {}
    for model, benches in evaluations.items():
        if not benchmarks or any(b not in benches for b in benchmarks):
            continue
        seeds = sorted(set.intersection(*(set(_per_seed(benches[b], "rouge_l")) for b in benchmarks)))
        by_seed = {b: {int(s["seed"]): s["by_length"] for s in benches[b]["per_seed"]} for b in benchmarks}
        labels = sorted({lab for b in benchmarks for lab in by_seed[b][seeds[0]]} if seeds else set(), key=_bucket_low)
        buckets: dict[str, tuple[Score, int]] = {}
        for label in labels:
            values = []
            for seed in seeds:
                cells = [by_seed[b][seed][label] for b in benchmarks if label in by_seed[b][seed]]
                n = sum(int(c["n"]) for c in cells)
                values.append(sum(int(c["n"]) * float(c["rouge_l"]) for c in cells) / n)
            n_total = sum(int(by_seed[b][seeds[0]][label]["n"]) for b in benchmarks if label in by_seed[b][seeds[0]])
            buckets[label] = (_score(values), n_total)
        out[model] = buckets
    return out


def rank_of(scores: Mapping[str, Score], name: str) -> tuple[int, int]:
    """``(rank, count)`` of ``name`` among ``scores`` by mean, 1 = highest (ties share the better rank)."""
    mine = scores[name].mean
    return 1 + sum(1 for s in scores.values() if s.mean > mine), len(scores)


def compare(a: Score, b: Score) -> Comparison:
    """``a − b`` against the pooled seed sd (see :class:`Comparison` for the verdict rule)."""
    diff = a.mean - b.mean
    pooled = math.sqrt((a.sd**2 + b.sd**2) / 2) if not (math.isnan(a.sd) or math.isnan(b.sd)) else math.nan
    if math.isnan(pooled) or pooled == 0:
        return Comparison(diff, pooled, "no seed sd")
    if abs(diff) > 2 * pooled:
        return Comparison(diff, pooled, "clear")
    return Comparison(diff, pooled, "within seed noise" if abs(diff) <= pooled else "small")


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


# ----------------------------------------------------------------------------------------------------- teacher share


def position_buckets(trace: pd.DataFrame, edges: Sequence[int] = POSITION_EDGES) -> list[tuple[str, float, int]]:
    """Teacher share per response-position bucket of a trace: ``[(label, share, tokens)]`` for non-empty buckets.

    Args:
        trace: :func:`~switch_core.evaluation.report.teacher_share_by_position` output (position, teacher, count).
        edges: bucket starts after 0: ``[0, e1-1], [e1, e2-1], ..., [ek, ∞)``.
    """
    lows = [0, *edges]
    out = []
    for i, low in enumerate(lows):
        high = lows[i + 1] - 1 if i + 1 < len(lows) else None
        inside = trace["position"] >= low
        if high is not None:
            inside &= trace["position"] <= high
        part = trace[inside]
        tokens = float(part["count"].sum())
        if tokens > 0:
            out.append((f"{low}–{high}" if high is not None else f"{low}+", float(part["teacher"].sum()) / tokens,
                        int(tokens)))
    return out


def overall_share(trace: pd.DataFrame) -> tuple[float, int]:
    """``(teacher tokens / tokens, tokens)`` over a whole trace (NaN share when it holds no token)."""
    tokens = float(trace["count"].sum())
    return (float(trace["teacher"].sum()) / tokens if tokens else math.nan), int(tokens)


def _metric_series(log: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if log is None or log.empty:
        return pd.DataFrame(columns=["step", "value"])
    return log[log["metric"] == name].sort_values("step")[["step", "value"]]


def rollout_batch_share(log: pd.DataFrame | None) -> float | None:
    """Share of a run's logged optimizer steps whose batch was a rollout (fresh, stored or replayed, or MiniLLM's policy
    rollouts) rather than dataset examples, from the per-window ``source/*`` fractions of its training log, weighted
    by the window's number of steps. None when the log has no ``source/*`` metric.

    Returns:
        A fraction in [0, 1].
    """
    if log is None or log.empty:
        return None
    sources = log[log["metric"].str.startswith("source/")]
    if sources.empty:
        return None
    steps = sorted(int(s) for s in sources["step"].unique())
    windows = dict(zip(steps, [b - a for a, b in zip([0, *steps], steps)]))
    examples = sources[sources["metric"] == "source/ground_truth"].set_index("step")["value"]
    total = sum(windows.values())
    return sum(w * (1.0 - float(examples.get(step, 0.0))) for step, w in windows.items()) / total


# ------------------------------------------------------------------------------------------------------------ tables


def _model_label(model: str) -> str:
    return REFERENCE_LABELS.get(model, model)


def score_table(scores: Mapping[str, Mapping[str, Score]], models: Sequence[str], benchmarks: Sequence[str],
                averages: Mapping[str, Score] | None = None, methods: Sequence[str] = ()) -> str:
    """Markdown table models × benchmarks of ``mean ± sd`` (``–`` = not evaluated), optional ``average`` column.

    The best of ``methods`` in each column is bold (reference rows are not ranked).
    """
    headers = ["model", *benchmarks] + (["average"] if averages is not None else [])
    columns: dict[str, dict[str, Score]] = {b: {m: scores[m][b] for m in models if b in scores.get(m, {})}
                                            for b in benchmarks}
    if averages is not None:
        columns["average"] = {m: averages[m] for m in models if m in averages}
    best = {}
    for col, cells in columns.items():
        ranked = {m: s for m, s in cells.items() if m in methods}
        best[col] = max(ranked, key=lambda m: ranked[m].mean) if ranked else None
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for model in models:
        cells = [_model_label(model)]
        for col in headers[1:]:
            score = columns[col].get(model)
            text = "–" if score is None else score.cell()
            cells.append(f"**{text}**" if score is not None and best[col] == model else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def has_per_seed(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], key: str) -> bool:
    """Whether every evaluation's per-seed rows carry ``key`` (older metrics files may lack some)."""
    return all(key in row for benches in evaluations.values() for m in benches.values() for row in m["per_seed"])


def length_table(lengths: Mapping[str, Score], stops: Mapping[str, Score], models: Sequence[str]) -> str:
    """Markdown table per model: mean response length (tokens) and share of answers ended by a stop token (%), each
    averaged over the benchmarks per seed, then mean ± sd over seeds."""
    lines = ["| model | response length (tokens) | ended by a stop token (%) |", "|---|---|---|"]
    for model in models:
        if model in lengths and model in stops:
            stop = stops[model]
            lines.append(f"| {_model_label(model)} | {lengths[model].cell()} | "
                         f"{Score(100 * stop.mean, 100 * stop.sd, stop.seeds).cell()} |")
    return "\n".join(lines)


def bucket_table(buckets: Mapping[str, Mapping[str, tuple[Score, int]]], models: Sequence[str]) -> str:
    """Markdown table models × reference-length buckets of pooled ROUGE-L ``mean ± sd`` (``n`` in the header)."""
    labels = sorted({lab for m in models for lab in buckets.get(m, {})}, key=_bucket_low)
    sizes = {lab: next(buckets[m][lab][1] for m in models if lab in buckets.get(m, {})) for lab in labels}
    lines = ["| model | " + " | ".join(f"{lab} (n={sizes[lab]})" for lab in labels) + " |",
             "|" + "---|" * (len(labels) + 1)]
    for model in models:
        if model in buckets:
            cells = [buckets[model][lab][0].cell() if lab in buckets[model] else "–" for lab in labels]
            lines.append(f"| {_model_label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _joined(files: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> str:
    return " / ".join(dict.fromkeys(str(get(f)) for f in files))


def evaluation_sizes_table(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], benchmarks: Sequence[str]) -> str:
    """Markdown table per benchmark: examples evaluated, examples available, subsample limit, seeds, new tokens.

    A value that differs between models is shown as all its values joined by `` / ``.
    """
    lines = ["| benchmark | evaluated | available | subsample limit | seeds | max new tokens |",
             "|---|---|---|---|---|---|"]
    for bench in benchmarks:
        files = [b[bench] for b in evaluations.values() if bench in b]
        if not files:
            lines.append(f"| {bench} | not evaluated yet | | | | |")
            continue
        cells = [
            _joined(files, lambda f: f["num_examples"]), _joined(files, lambda f: f.get("available_examples")),
            _joined(files, lambda f: f.get("limit") or "none (full set)"),
            _joined(files, lambda f: ", ".join(str(x) for x in f["protocol"]["seeds"])),
            _joined(files, lambda f: f["protocol"]["max_new_tokens"]),
        ]
        lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stages(trained: Sequence[str], runs: Sequence[str]) -> list[tuple[str, str]]:
    return [(n, label) for n, label in TRAINED_STAGES if n in trained] + [(r, f"distill `{r}`") for r in runs]


def training_time_table(summaries: Mapping[str, dict[str, Any]], trained: Sequence[str], runs: Sequence[str]) -> str:
    """Markdown table of the training stages (``trained`` of teacher / student-sft, then ``runs``): steps, best step,
    wall time in minutes, from their train_summary.json."""
    lines = ["| stage | steps | best step | wall time (min) |", "|---|---|---|---|"]
    for name, label in _stages(trained, runs):
        summary = summaries.get(name)
        if summary is None:
            lines.append(f"| {label} | not finished | | |")
            continue
        wall = f"{float(summary['wall_seconds']) / 60:.1f}" if "wall_seconds" in summary else "unknown"
        lines.append(f"| {label} | {summary['steps']} | {summary['best_step']} | {wall} |")
    total = training_seconds(summaries, trained, runs)
    lines.append(f"| **total of the finished stages** | | | **{total / 60:.1f}** |")
    return "\n".join(lines)


def training_seconds(summaries: Mapping[str, dict[str, Any]], trained: Sequence[str], runs: Sequence[str]) -> float:
    """Wall seconds summed over the finished training stages (``trained`` and ``runs``)."""
    return sum(float(summaries[n].get("wall_seconds", 0.0)) for n, _ in _stages(trained, runs) if n in summaries)


def seqkd_seconds(meta: Mapping[str, Any] | None) -> float | None:
    """Seconds the teacher spent generating the SeqKD data (generated tokens / tokens per second of its meta.json),
    or None when there is no SeqKD data or no rate."""
    if not meta or not meta.get("tokens_per_second"):
        return None
    return float(meta["generated_tokens"]) / float(meta["tokens_per_second"])


def generation_seconds(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], model: str) -> tuple[float, float]:
    """(seconds, generated tokens) of a model's benchmark generations, summed over benchmarks and seeds."""
    benches = evaluations.get(model, {}).values()
    return (sum(float(m.get("throughput", {}).get("seconds", 0.0)) for m in benches),
            sum(float(m.get("throughput", {}).get("generated_tokens", 0.0)) for m in benches))


def evaluation_time_table(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], models: Sequence[str]) -> str:
    """Markdown table per model: generation seconds summed over its evaluated benchmarks and seeds, tokens/s; and
    their total."""
    lines = ["| model | benchmarks | generation time (min) | tokens/s |", "|---|---|---|---|"]
    total = 0.0
    for model in models:
        benches = evaluations.get(model, {})
        if not benches:
            lines.append(f"| {_model_label(model)} | not evaluated yet | | |")
            continue
        seconds, tokens = generation_seconds(evaluations, model)
        total += seconds
        rate = f"{tokens / seconds:.0f}" if seconds > 0 else "–"
        lines.append(f"| {_model_label(model)} | {len(benches)} | {seconds / 60:.1f} | {rate} |")
    lines.append(f"| **total** | | **{total / 60:.1f}** | |")
    lines += ["", ("tokens/s depends on the machine's load when the model was evaluated and on how many answers stop "
              "early (padding), so it compares models only under the same conditions.")]
    return "\n".join(lines)


def compute_summary(outputs: RunOutputs, trained: Sequence[str], runs: Sequence[str], models: Sequence[str]) -> str:
    """One line: the timed compute of the run in minutes (training + SeqKD data + evaluation generation), in hours."""
    train = training_seconds(outputs.summaries, trained, runs)
    seqkd = seqkd_seconds(outputs.seqkd_meta)
    generate = sum(generation_seconds(outputs.evaluations, m)[0] for m in models)
    parts = [f"training {train / 60:.1f}"] + ([f"SeqKD data {seqkd / 60:.1f}"] if seqkd is not None else []) + [
        f"evaluation generation {generate / 60:.1f}"]
    total = train + (seqkd or 0.0) + generate
    untimed = ["data preparation", "teacher set-up", "student build"] + (
        [] if seqkd is not None else ["SeqKD data generation"]) + ["scoring"]
    return (f"Timed compute (each stage's wall time on the machine that ran it, summed; stages that ran at the same "
            f"time count in full): {' + '.join(parts)} = {total / 60:.1f} min ({total / 3600:.2f} h). Not timed: "
            f"{', '.join(untimed)}.")


def teacher_share_table(outputs: RunOutputs, runs: Sequence[str], target: float | None) -> str:
    """Markdown table per SWITCH run: τ0, calibration, teacher share over training (log) and over all rollouts
    (trace), and by response-position bucket."""
    lines = ["| run | τ0 | calibrated share (target) | logged share first → last step | all rollout tokens |",
             "|---|---|---|---|---|"]
    for run in runs:
        summary, log, trace = outputs.summaries.get(run), outputs.logs.get(run), outputs.traces.get(run)
        tau0 = summary.get("tau0") if summary else None
        calib_tau = _metric_series(log, "calibration/tau0")
        tau_text = "–" if tau0 is None else f"{float(tau0):.4f}" + (" (calibrated)" if len(calib_tau) else " (fixed)")
        calib = _metric_series(log, "calibration/teacher_share")
        calib_text = f"{100 * calib['value'].iloc[-1]:.1f}%" if len(calib) else "–"
        if target is not None and len(calib):
            calib_text += f" ({100 * target:.0f}%)"
        shares = _metric_series(log, "rollout/teacher_share")
        logged = "–"
        if len(shares):
            first, last = shares.iloc[0], shares.iloc[-1]
            logged = (f"{100 * first['value']:.1f}% (step {int(first['step'])}) → "
                      f"{100 * last['value']:.1f}% (step {int(last['step'])})")
        overall = "–"
        if trace is not None:
            share, tokens = overall_share(trace)
            overall = f"{100 * share:.1f}% of {tokens} tokens"
        lines.append(f"| {run} | {tau_text} | {calib_text} | {logged} | {overall} |")
    for run in runs:
        search = (outputs.summaries.get(run) or {}).get("calibration")
        if search and search.get("history"):
            tries = sorted((float(t["tau0"]), float(t["share"])) for t in search["history"])
            lines += ["", f"τ0 search of `{run}` on its calibration prompts (τ0 → teacher share, by τ0): "
                      + ", ".join(f"{tau:.4g} → {100 * share:.1f}%" for tau, share in tries)
                      + f"; kept {float(search['tau0']):.4g} ({100 * float(search['achieved_share']):.1f}%)."]
    rows = {run: position_buckets(outputs.traces[run]) for run in runs if run in outputs.traces}
    if rows:
        labels = list(dict.fromkeys(lab for r in rows.values() for lab, _, _ in r))
        lines += ["", "Teacher share by response position (tokens in brackets):", "",
                  "| run | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
        for run, buckets in rows.items():
            cells = {lab: f"{100 * share:.1f}% ({tokens})" for lab, share, tokens in buckets}
            lines.append(f"| {run} | " + " | ".join(cells.get(lab, "–") for lab in labels) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadingInputs:
    """The numbers the reading rules look at (built by :func:`write_results_doc`).

    Attributes:
        switch: the SWITCH run the reading is about (None when the configuration has none).
        methods: every distillation run (SWITCH included), in table order.
        method_of: run name -> method name (``switch``, ``distillm``, ``sft``...).
        averages: average ROUGE-L over ``benchmarks`` per model.
        per_benchmark: ROUGE-L per model and benchmark.
        buckets: pooled ROUGE-L by reference-length bucket per model.
        benchmarks: the benchmarks of the averages.
        traces: teacher share by position per run.
        target_share: the calibration target (``rollout.target_teacher_share``), None if unknown.
        tau0: τ0 per SWITCH run (calibrated or set; ``train_summary.json``); runs without one are unknown.
        decay: λ of the exponential threshold per SWITCH run (``rollout.decay`` with its overrides); runs without one
            are unknown or use another schedule.
        rollout_share: per run, the logged share of optimizer steps that trained on rollouts
            (:func:`rollout_batch_share`); runs without a log are unknown.
        stop_rate: per model, the share of evaluation answers ended by a stop token (averaged over ``benchmarks``).
    """

    switch: str | None
    methods: Sequence[str]
    method_of: Mapping[str, str]
    averages: Mapping[str, Score]
    per_benchmark: Mapping[str, Mapping[str, Score]]
    buckets: Mapping[str, Mapping[str, tuple[Score, int]]]
    benchmarks: Sequence[str]
    traces: Mapping[str, pd.DataFrame]
    target_share: float | None
    tau0: Mapping[str, float] = field(default_factory=dict)
    decay: Mapping[str, float] = field(default_factory=dict)
    rollout_share: Mapping[str, float] = field(default_factory=dict)
    stop_rate: Mapping[str, Score] = field(default_factory=dict)

    @property
    def baselines(self) -> list[str]:
        """The runs of other methods than SWITCH, in table order."""
        return [m for m in self.methods if self.method_of.get(m) != "switch"]

    @property
    def variants(self) -> list[str]:
        """The SWITCH runs other than the one the reading is about."""
        return [m for m in self.methods if self.method_of.get(m) == "switch" and m != self.switch]


def student_only_positions(tau0: float, decay: float) -> float:
    """Response positions where the exponential threshold exceeds the largest possible JSD (ln 2), so the student
    always emits: ``t < ln(τ0 / ln 2) / λ`` (SWITCH's rule, method.md §1; 0 when τ0 ≤ ln 2, inf when λ = 0)."""
    if tau0 <= math.log(2):
        return 0.0
    return math.inf if decay <= 0 else math.log(tau0 / math.log(2)) / decay


def _named(r: ReadingInputs, method: str) -> str | None:
    return next((m for m in r.methods if r.method_of.get(m) == method), None)


def _share_ends(trace: pd.DataFrame) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """``((label, share), (label, share))`` of the first and last position buckets with at least
    :data:`MIN_BUCKET_TOKENS` tokens, or None when fewer than two have that many."""
    buckets = [(label, share) for label, share, tokens in position_buckets(trace) if tokens >= MIN_BUCKET_TOKENS]
    return (buckets[0], buckets[-1]) if len(buckets) >= 2 else None


def _percent(share: float) -> str:
    """A share as a percentage: one decimal below 10%, none above."""
    return f"{100 * share:.1f}%" if share < 0.1 else f"{100 * share:.0f}%"


def _listed(runs: Sequence[str]) -> str:
    return ", ".join(f"`{m}`" for m in runs)


def _with_verb(runs: Sequence[str], singular: str, plural: str) -> str:
    """``"`a` scores"`` / ``"`a`, `b` score"``."""
    return f"{_listed(runs)} {singular if len(runs) == 1 else plural}"


def _read_ranking(r: ReadingInputs) -> list[str]:
    sw = r.switch
    ranked = {m: r.averages[m] for m in [*r.baselines, sw] if m in r.averages}
    if sw not in ranked or len(ranked) < 2:
        return [f"Ranking over methods: cannot be assessed yet ({len(ranked)} method(s) with every benchmark "
                "evaluated, SWITCH " + ("among them" if sw in ranked else "not among them") + ")."]
    rank, count = rank_of(ranked, sw)
    best = max(ranked, key=lambda m: ranked[m].mean)
    leader = "it is the best method" if best == sw else f"the best method is `{best}` ({ranked[best].cell()})"
    lines = [(f"Overall, SWITCH (`{sw}`) ranks **{_ordinal(rank)} of {count}** methods (SWITCH and the baselines) by "
              f"the average ROUGE-L over {len(r.benchmarks)} benchmarks ({ranked[sw].cell()}); {leader}. Below, "
              "\"clear\" means a difference of more than twice the pooled sd over generation seeds, each method "
              "trained once: the spread between training runs is not measured.")]
    if best != sw and r.method_of.get(best) in ON_POLICY_METHODS and r.rollout_share.get(best, 1.0) < 0.1:
        lines.append(f"The best method `{best}` trained on rollouts in only {_percent(r.rollout_share[best])} of its "
                     "steps (its training log), almost only on the reference responses: its lead here does not come "
                     "from learning on student-generated outputs.")
    beaten_by = [m for m in ranked if m != sw and ranked[m].mean >= ranked[sw].mean]
    claim = "The paper's abstract says SWITCH outperforms traditional KD methods"
    if beaten_by:
        clearly = [m for m in beaten_by if compare(ranked[m], ranked[sw]).verdict == "clear"]
        close = [m for m in beaten_by if m not in clearly]
        parts = ([f"{_with_verb(clearly, 'scores', 'score')} clearly higher"] if clearly else []) + (
            [f"{_with_verb(close, 'scores', 'score')} as high or higher by less than that" if clearly else
             f"{_with_verb(close, 'scores', 'score')} as high or higher, though not clearly"] if close else [])
        lines.append(f"{claim}; **here it does not beat them all**: {'; '.join(parts)}.")
    else:
        lines.append(f"{claim}; here it does on average "
                     f"({'the other method scores' if count == 2 else f'all {count - 1} other methods score'} lower).")
    wins = [b for b in r.benchmarks
            if sw in r.per_benchmark and b in r.per_benchmark[sw]
            and all(r.per_benchmark[sw][b].mean > r.per_benchmark[m][b].mean
                    for m in ranked if m != sw and b in r.per_benchmark.get(m, {}))]
    lines.append(f"SWITCH is the best method on {len(wins)} of {len(r.benchmarks)} benchmarks"
                 + (f" ({', '.join(wins)})." if wins else "."))
    return lines


def _read_against(r: ReadingInputs, other: str | None, label: str) -> str:
    sw = r.switch
    if other is None:
        return f"SWITCH vs {label}: no such run in this study."
    if sw not in r.averages or other not in r.averages:
        missing = [m for m in (sw, other) if m not in r.averages]
        absent = ", ".join(f"`{m}`" for m in missing)
        return f"SWITCH vs {label} (`{other}`): cannot be assessed yet ({absent} not evaluated on every benchmark)."
    return f"SWITCH − {label} (`{other}`), average ROUGE-L: {compare(r.averages[sw], r.averages[other]).text()}."


def _longest_bucket(r: ReadingInputs) -> str | None:
    labels = {lab for m in r.methods for lab in r.buckets.get(m, {})}
    return max(labels, key=_bucket_low) if labels else None


def _read_long(r: ReadingInputs) -> list[str]:
    sw, label = r.switch, _longest_bucket(r)
    ranked = {m: r.buckets[m][label][0] for m in [*r.baselines, sw] if label and label in r.buckets.get(m, {})}
    if sw not in ranked or len(ranked) < 2:
        return [("Long responses: cannot be assessed yet (the longest-reference bucket needs SWITCH and another "
                "method evaluated on every benchmark).")]
    rank, count = rank_of(ranked, sw)
    n = r.buckets[sw][label][1]
    best_other = max((m for m in ranked if m != sw), key=lambda m: ranked[m].mean)
    long = compare(ranked[sw], ranked[best_other])
    average_ranked = {m: r.averages[m] for m in ranked if m in r.averages}
    versus = (f" (vs {_ordinal(rank_of(average_ranked, sw)[0])} on average)"
              if sw in average_ranked and len(average_ranked) == count else "")
    lines = [(f"In the longest-reference bucket ({label} tokens, n={n} examples pooled over {len(r.benchmarks)} "
             f"benchmarks) SWITCH ranks **{_ordinal(rank)} of {count}**{versus} ({ranked[sw].cell()}); margin over "
             f"the best other method `{best_other}`: {long.text()}.")]
    overall = {m: r.averages[m] for m in ranked if m in r.averages}
    if len(overall) >= 2 and sw in overall:
        top = max((m for m in overall if m != sw), key=lambda m: overall[m].mean)
        average = compare(overall[sw], overall[top])
        change = long.diff - average.diff
        noise = max(long.pooled_sd, average.pooled_sd)
        if not abs(change) > noise:
            verdict = ("the two margins differ by no more than the seed sd, so SWITCH does no better on long "
                       "references than overall: the paper's claim that it gains most on long responses is not seen "
                       "here")
        elif change > 0 and rank == 1:
            verdict = "consistent with the paper's claim that SWITCH gains most on long responses"
        elif change > 0:
            verdict = ("SWITCH does relatively better on long references than overall, but is not the best there: the "
                       "paper's claim holds only in direction")
        else:
            verdict = "the paper's claim that SWITCH gains most on long responses is not seen here"
        lines.append(f"Its margin over the best other method is {long.diff:+.2f} on the longest references vs "
                     f"{average.diff:+.2f} on average: {verdict}.")
    return lines


def _read_share(r: ReadingInputs) -> list[str]:
    sw = r.switch
    trace = r.traces.get(sw) if sw else None
    if trace is None:
        return ["Teacher share by position: no rollout trace of the SWITCH run yet."]
    share, tokens = overall_share(trace)
    target = f"calibration target {100 * r.target_share:.0f}%, " if r.target_share is not None else ""
    lines = [(f"Teacher share over all {tokens} tokens of SWITCH's training rollouts: {100 * share:.1f}% ({target}"
             f"paper {100 * PAPER_TEACHER_SHARE:.0f}%).")]
    longest = int(trace["position"].max())
    tau0, decay = r.tau0.get(sw), r.decay.get(sw)
    if tau0 is not None and decay is not None and student_only_positions(tau0, decay) > 0:
        first = student_only_positions(tau0, decay)
        positions = "every response position" if math.isinf(first) else f"response positions 0–{math.ceil(first) - 1}"
        lines.append(f"τ0 = {tau0:.3g} exceeds ln 2, the largest JSD, so the threshold cannot be crossed at "
                     f"{positions} (λ = {decay:g}): the student writes them alone and the teacher share comes from "
                     "later positions (with τ0 ≤ ln 2 the teacher may step in from the first token, when the JSD "
                     "exceeds the threshold).")
        if first >= 0.25 * (longest + 1):
            crossable = [v for v in r.variants if r.tau0.get(v) is not None and r.tau0[v] <= math.log(2)]
            lines.append("So this run tests a student-written opening followed by mostly teacher-written tokens, not "
                         "the token-by-token switching from the first token that the paper describes; its rank says "
                         "little about SWITCH in the paper's regime"
                         + (f" ({_listed(crossable)}: τ0 ≤ ln 2, see below)." if crossable else "."))
    ends = _share_ends(trace)
    if ends is None:
        lines.append(f"Too few position buckets with ≥{MIN_BUCKET_TOKENS} tokens to tell whether the share rises "
                     "with position.")
        return lines
    starts = float(trace.loc[trace["position"] == 0, "count"].sum())
    if starts > 0:
        reach = float(trace.loc[trace["position"] == longest, "count"].sum()) / starts
        lines.append(f"{100 * reach:.0f}% of the rollouts run to the longest length in the trace ({longest + 1} "
                     "tokens).")
    (first, s0), (last, s1) = ends
    rises = s1 > s0
    lines.append(f"The teacher share {'rises' if rises else 'does not rise'} with response position: "
                 f"{100 * s0:.1f}% at positions {first} vs {100 * s1:.1f}% at {last}"
                 + (", as the decaying threshold τ_t = τ0·exp(−λt) intends." if rises else
                    ", against what the decaying threshold τ_t = τ0·exp(−λt) intends."))
    return lines


def _read_variant(r: ReadingInputs, v: str) -> str:
    """One SWITCH variant (another SWITCH run): its settings, rank among the baselines, and margins."""
    tau0, decay = r.tau0.get(v), r.decay.get(v)
    settings = ", ".join(([f"τ0 = {tau0:.4g}"] if tau0 is not None else [])
                         + ([f"λ = {decay:g}"] if decay is not None else []))
    trace = r.traces.get(v)
    if trace is not None:
        share, tokens = overall_share(trace)
        settings += f"; teacher share {100 * share:.1f}% of {tokens} rollout tokens"
        ends = _share_ends(trace)
        if ends is not None:
            (first, s0), (last, s1) = ends
            settings += f", {100 * s0:.1f}% at positions {first} and {100 * s1:.1f}% at {last}"
    head = f"SWITCH variant `{v}` ({settings})"
    if v not in r.averages:
        return f"{head}: not evaluated on every benchmark yet."
    ranked = {m: r.averages[m] for m in [*r.baselines, v] if m in r.averages}
    rank, count = rank_of(ranked, v)
    text = f"{head}: average ROUGE-L {r.averages[v].cell()}, **{_ordinal(rank)} of {count}** against the baselines"
    if r.switch in r.averages:
        versus = compare(r.averages[v], r.averages[r.switch])
        alike = " (the two SWITCH settings score alike)" if versus.verdict == "within seed noise" else ""
        text += f"; `{v}` − `{r.switch}`: {versus.text()}{alike}"
    others = [m for m in ranked if m != v]
    if others:
        best = max(others, key=lambda m: ranked[m].mean)
        text += f"; `{v}` − best baseline `{best}`: {compare(ranked[v], ranked[best]).text()}"
    return text + "."


def _read_stops(r: ReadingInputs) -> list[str]:
    """Runs whose evaluation answers (almost) never end with a stop token, against the others' stop rates."""
    rates = {m: r.stop_rate[m].mean for m in r.methods if m in r.stop_rate}
    rarely = [m for m, rate in rates.items() if rate < RARE_STOP_RATE]
    others = [rate for m, rate in rates.items() if rate >= RARE_STOP_RATE]
    if not rarely or not others:
        return []
    low, high = _percent(min(others)), _percent(max(others))
    own = ", ".join(_percent(rates[m]) for m in rarely)
    whose = "its" if len(rarely) == 1 else "their"
    return [(f"At evaluation, {_with_verb(rarely, 'ends', 'end')} fewer than {_percent(RARE_STOP_RATE)} of {whose} "
             f"answers with a stop token ({own}): nearly every answer runs to the new-token cap, while the other distillation "
             f"runs end {low if low == high else f'{low}–{high}'} of theirs (Response length). Longer answers change "
             "ROUGE-L (lower precision against short references), so part of the ranking reflects answer length "
             "rather than content.")]


def _read_gap(r: ReadingInputs) -> list[str]:
    teacher, student = r.averages.get("teacher"), r.averages.get("student-sft") or r.averages.get("student-init")
    if teacher is None or student is None:
        return [("Teacher–student gap: cannot be assessed yet (teacher or student reference not evaluated on every "
                "benchmark).")]
    name = "student-sft" if "student-sft" in r.averages else "student-init"
    gap = compare(teacher, student)
    lines = [f"Teacher − {name}, average ROUGE-L: {gap.text()}."]
    if gap.verdict != "clear" or gap.diff <= 0:
        lines.append("The gap is not clear, so the distillation methods have little room to separate: the ranking "
                     "above is weak evidence either way.")
    recovered = [(m, (r.averages[m].mean - student.mean) / gap.diff) for m in r.methods if m in r.averages]
    if recovered and gap.diff > 0:
        lines.append("Share of that gap recovered (average ROUGE-L): "
                     + ", ".join(f"`{m}` {100 * f:.0f}%" for m, f in recovered) + ".")
    return lines


def _read_dolly(r: ReadingInputs) -> str | None:
    sw = r.switch
    if sw is None or "dolly" not in r.per_benchmark.get(sw, {}):
        return None
    others = {m: r.per_benchmark[m]["dolly"] for m in r.methods if m != sw and "dolly" in r.per_benchmark.get(m, {})}
    if not others:
        return None
    best = max(others, key=lambda m: others[m].mean)
    paper_sw, paper_base = PAPER_DOLLY_NUMBERS
    margin = r.per_benchmark[sw]["dolly"].mean - others[best].mean
    return (f"Dolly: SWITCH − best other method (`{best}`) = {margin:+.2f} here; the only paper number found is "
            f"{paper_sw} vs {paper_base} for an unnamed baseline ({paper_sw - paper_base:+.1f}, larger models and the "
            "full training set; method.md §3).")


def reading(r: ReadingInputs) -> list[str]:
    """Rule-based statements on the result against the paper's claims, one markdown bullet each.

    Rules: SWITCH's rank among itself and the baselines (runs of other methods) by average ROUGE-L and in the
    longest-reference bucket (pooled over benchmarks); the baselines it does not beat; whether the best method
    trained on rollouts in under 10% of its steps (then its lead is not that of on-policy learning); SWITCH − DistiLLM and
    SWITCH − SFT judged against the pooled seed sd (:func:`compare`); whether its margin over the best other method
    is larger on the longest references than on average by more than the seed sd (the paper's "especially on long
    responses"); whether τ0 > ln 2 leaves the first positions to the student, and whether for a quarter of the
    longest rollout or more (then the run is not the paper's regime); whether the teacher share rises from the
    first to the last response-position bucket with at least :data:`MIN_BUCKET_TOKENS` tokens (the decaying
    threshold's intent); each other SWITCH run's rank against the baselines and margins; which runs end fewer than
    :data:`RARE_STOP_RATE` of their evaluation answers with a stop token while others do not; whether the teacher −
    student gap is clear and what share of it each method recovers. Statements whose inputs are missing say so.
    """
    if r.switch is None:
        return ["This study has no SWITCH run: nothing to read against the paper."]
    lines = _read_ranking(r)
    lines.append(_read_against(r, _named(r, "distillm"), "DistiLLM"))
    lines.append(_read_against(r, _named(r, "sft"), "the SFT student"))
    lines += _read_long(r)
    dolly = _read_dolly(r)
    if dolly:
        lines.append(dolly)
    lines += _read_share(r)
    lines += [_read_variant(r, v) for v in r.variants]
    lines += _read_stops(r)
    lines += _read_gap(r)
    return lines


# ----------------------------------------------------------------------------------------------------------- writing


def plot_averages(averages: Mapping[str, Score], models: Sequence[str], path: str | Path) -> Path:
    """Horizontal bars of the average ROUGE-L per model with seed-sd error bars (models in ``models`` order)."""
    names = [m for m in models if m in averages]
    fig = Figure(figsize=(6.4, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(names)), [averages[m].mean for m in names],
            xerr=[0.0 if math.isnan(averages[m].sd) else averages[m].sd for m in names], capsize=3,
            color=["0.6" if m in REFERENCE_MODELS else "C0" for m in names])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("average ROUGE-L over benchmarks (mean ± sd over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path)


def missing_inputs(outputs: RunOutputs, models: Sequence[str], benchmarks: Sequence[str], trained: Sequence[str],
                   runs: Sequence[str], switch_runs: Sequence[str]) -> list[str]:
    """Human-readable list of the expected outputs not (yet) in the run folder: the data report, each model's
    evaluation on each benchmark, the train_summary.json of each trained stage and run, each SWITCH run's trace."""
    missing = []
    if outputs.data_report is None:
        missing.append("data/data_report.json (prepare-data)")
    for model in models:
        absent = [b for b in benchmarks if b not in outputs.evaluations.get(model, {})]
        if absent:
            missing.append(f"evaluation of `{model}` on {', '.join(absent)}")
    for name, label in _stages(trained, runs):
        if name not in outputs.summaries:
            missing.append(f"models/{name}/train_summary.json ({label})")
    for run in switch_runs:
        if run not in outputs.traces:
            missing.append(f"state/{run}/rollout_traces.jsonl (SWITCH rollouts of `{run}`)")
    return missing


def data_section(report: dict[str, Any] | None) -> list[str]:
    """Markdown lines on the training data: source, records, split sizes, and how it differs from the paper's."""
    if report is None:
        return ["The data report (data/data_report.json) is not there yet."]
    splits = report.get("splits", {})
    lines = [(f"- source: `{report.get('source')}` `{report.get('path')}`; {report.get('loaded')} records loaded, "
             f"{report.get('used')} used"),
             "- splits: " + ", ".join(f"{name} {count}" for name, count in splits.items())]
    train = int(splits.get("train", 0))
    if train < PAPER_DOLLY_TRAIN:
        source = str(report.get("path") or "")
        origin = (" — the 1,000 human-written rows of MiniLLM's Dolly dev split" if source.endswith("dolly/dev.jsonl")
                  else "")
        lines.append(f"- **the full databricks-dolly-15k training set is not available here** (no hub access): "
                     f"training used {train} examples from `{source}`{origin}, where the paper trains on about "
                     f"{PAPER_DOLLY_TRAIN:,}.")
    return lines


def training_overlap(run_dir: str | Path, benchmarks: Sequence[str], models: Sequence[str]) -> list[tuple[str, int, int]]:
    """Evaluation prompts that also occur in the training split: ``[(benchmark, in_train, evaluated)]``.

    A prompt counts when the benchmark's prompt text equals a training record's MiniLLM-template prompt
    (:func:`~switch_core.data.prompts.format_prompt`, method.md §5.2). The evaluated prompts are read from the
    ``generations.jsonl`` of the first model in ``models`` evaluated on the benchmark; benchmarks without one, and all
    of them when the training split is missing, are left out.

    Raises:
        switch_core.data.records.DataFormatError: a training split with a bad row.
    """
    run_dir = Path(run_dir)
    train_file = run_dir / "data" / "train.jsonl"
    if not train_file.is_file():
        return []
    train = {format_prompt(record) for record in read_records(train_file)}
    out = []
    for bench in benchmarks:
        file = next((f for m in models if (f := run_dir / "eval" / m / bench / GENERATIONS_FILE).is_file()), None)
        if file is None:
            continue
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts = {row["id"]: row["prompt"] for row in rows}
        out.append((bench, sum(p in train for p in prompts.values()), len(prompts)))
    return out


def _caveats(outputs: RunOutputs, runs: Sequence[str], benchmarks: Sequence[str]) -> list[str]:
    lines = [("Every method is trained once (one training seed): the ± is the spread over generation seeds only, so it "
             "understates the run-to-run spread of training.")]
    steps = sorted({int(outputs.summaries[r]["steps"]) for r in runs if r in outputs.summaries})
    if steps:
        lines.append(f"Distillation runs took {' / '.join(str(s) for s in steps)} optimizer steps (the paper's scripts "
                     "train 10–20 epochs of ~14k examples).")
    files = [b[x] for b in outputs.evaluations.values() for x in benchmarks if x in b]
    ns = sorted({int(f["num_examples"]) for f in files})
    tokens = sorted({int(f["protocol"]["max_new_tokens"]) for f in files})
    if ns:
        lines.append(f"Each benchmark is scored on {' / '.join(str(n) for n in ns)} prompts with up to "
                     f"{' / '.join(str(t) for t in tokens)} new tokens (protocol: the full sets, "
                     f"{PAPER_MAX_NEW_TOKENS} tokens), so long responses are cut and small differences are noisy.")
    return lines


def write_results_doc(
    run_dir: str | Path,
    out_md: str | Path,
    *,
    commands: Sequence[str],
    commit: str | None,
    models: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
    methods: Mapping[str, str] | None = None,
    trained: Sequence[str] = ("teacher", "student-sft"),
    target_share: float | None = None,
    decays: Mapping[str, float] | None = None,
    plots_dir: str | Path | None = None,
    run_label: str | None = None,
    title: str = "Results",
    commands_note: str | None = None,
    notes: Sequence[str] = (),
    method_descriptions: Mapping[str, MethodDescription] | None = None,
    generated_with: str | None = None,
) -> ResultsDoc:
    """Write the results document of a run (markdown + PNG plots) from its outputs alone.

    Args:
        run_dir: the run folder.
        out_md: the markdown file (e.g. ``docs/RESULTS.md``); its folder is created.
        commands: the commands that produced the run, shown verbatim.
        commit: the git commit of the code that produced the run (None: shown as unknown).
        models: models expected in the tables, in order (default: the evaluated ones, references first).
        benchmarks: benchmarks expected (default: the evaluated ones).
        methods: distillation run name -> method (default: every evaluated non-reference model, named after its
            method). The SWITCH run the reading is about is the one named ``switch``, else the first ``switch`` method.
        trained: which of ``teacher`` (teacher SFT) and ``student-sft`` (warm-up) were trained in this run.
        target_share: the τ0 calibration target (``rollout.target_teacher_share``).
        decays: SWITCH run -> λ of its exponential threshold schedule (``rollout.decay`` with the run's overrides;
            runs of another schedule left out).
        plots_dir: where the PNGs go (default: ``<out_md folder>/results``); linked relatively.
        run_label: how the run folder is named in the text (default: ``run_dir`` as given).
        title: the first heading.
        commands_note: a line under the commands (e.g. that they were reconstructed).
        notes: remarks of whoever ran the study (machine conditions...), listed under Provenance as operator's notes.
        method_descriptions: stage label (e.g. ``teacher SFT``) or run name -> what it trains on and with which loss
            (:mod:`switch_core.evaluation.method_text`); shown as the Methods table, with each run's logged share of
            rollout batches, when given.
        generated_with: the git commit of the code writing the document, stated when it is not ``commit``.

    Returns:
        A :class:`ResultsDoc` with the files written and the missing inputs listed in the document.

    Raises:
        ResultsDocError: ``run_dir`` holds none of the outputs (nothing is written: a wrong ``--run-dir``, or a
            checkout without the study, must not overwrite a published document), or an output file that exists but
            is not readable (names the file).
    """
    out_md = Path(out_md)
    plots = Path(plots_dir) if plots_dir is not None else out_md.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    outputs = load_run_outputs(run_dir, list(methods or ()))
    if not (outputs.evaluations or outputs.summaries or outputs.data_report or outputs.traces):
        raise ResultsDocError(
            f"no run outputs in {outputs.run_dir} (no data report, training summary or evaluation): run the study "
            "first (dvc repro or switch-kd pipeline) or give its folder with --run-dir; nothing written"
        )
    evaluated = list(outputs.evaluations)
    if methods is None:
        methods = {m: m for m in evaluated if m not in REFERENCE_MODELS}
    if models is None:
        models = [m for m in REFERENCE_MODELS if m in evaluated] + list(methods)
    if benchmarks is None:
        benchmarks = sorted({b for benches in outputs.evaluations.values() for b in benches})
    runs = list(methods)
    switch_runs = [m for m in runs if methods[m] == "switch"]
    switch = "switch" if "switch" in switch_runs else (switch_runs[0] if switch_runs else None)
    done = [b for b in benchmarks if any(b in outputs.evaluations.get(m, {}) for m in models)]
    evals = {m: outputs.evaluations[m] for m in models if m in outputs.evaluations}
    rouge, averages = benchmark_scores(evals), average_scores(evals, done)
    buckets = bucket_scores(evals, done)
    missing = missing_inputs(outputs, models, benchmarks, trained, runs, switch_runs)

    written: list[Path] = []
    links: dict[str, str] = {}

    def keep(name: str, path: Path) -> None:
        written.append(path)
        links[name] = Path(os.path.relpath(path, out_md.parent)).as_posix()

    if averages:
        keep("average", plot_averages(averages, models, plots / "rouge_average.png"))
    if evals:
        try:
            frame = collect_metrics(outputs.run_dir / "eval", [m for m in models if m in evals])
        except ReportInputError as err:
            raise ResultsDocError(str(err)) from None
        keep("by_length", plot_rouge_by_length(frame, plots / "rouge_by_length.png"))
    share_runs = [r for r in dict.fromkeys([*switch_runs, *outputs.traces]) if r in outputs.traces]
    if share_runs:
        keep("share", plot_teacher_share({r: outputs.traces[r] for r in share_runs},
                                         plots / "teacher_share_by_position.png"))

    bleu, em = benchmark_scores(evals, "bleu"), benchmark_scores(evals, "exact_match")
    measured = has_per_seed(evals, "mean_prediction_length") and has_per_seed(evals, "stopped_fraction")
    lengths = average_scores(evals, done, "mean_prediction_length") if measured else {}
    stops = average_scores(evals, done, "stopped_fraction") if measured else {}
    tau0 = {r: float(outputs.summaries[r]["tau0"]) for r in switch_runs
            if outputs.summaries.get(r, {}).get("tau0") is not None}
    shares = {r: share for r in runs if (share := rollout_batch_share(outputs.logs.get(r))) is not None}
    inputs = ReadingInputs(switch, runs, methods, averages, rouge, buckets, done, outputs.traces, target_share,
                           tau0=tau0, decay=dict(decays or {}), rollout_share=shares, stop_rate=stops)
    label = run_label or str(run_dir)
    md = [
        f"# {title}", "",
        (f"Generated by `switch-kd results-doc` from the outputs in `{label}`; do not edit by hand (rerun the "
        "command)."), "",
        "## Provenance", "",
        f"- code: git commit `{commit}`" if commit else "- code: git commit unknown (pass `--commit`)",
    ]
    if generated_with and commit and generated_with != commit:
        md.append(f"- this document was generated with the code at `{generated_with}`; `git diff {commit} "
                  f"{generated_with.split()[0]}` shows what changed since the run")
    md += [
        "- commands:", "", "```", *commands, "```", "",
    ]
    if commands_note:
        md += [commands_note, ""]
    if notes:
        md += ["Operator's notes (given with `--note`, not generated):", "", *[f"- {n}" for n in notes], ""]
    md += ["## Status", ""]
    md += (["Missing (the study may still be running; tables show `–`):", ""] + [f"- {m}" for m in missing]
           if missing else [(f"Complete: {len(models)} models × {len(benchmarks)} benchmarks, every training summary "
                            "and SWITCH trace present.")])
    overlap = training_overlap(outputs.run_dir, done, models)
    md += ["", "## Data", "", *data_section(outputs.data_report)]
    if overlap:
        md += ["- evaluation prompts that also occur in the training split (same prompt text): "
               + ", ".join(f"{b} {n}/{total}" for b, n, total in overlap)]
    absent = [f"{b} ({label})" for b, label in PAPER_BENCHMARKS.items() if b not in benchmarks]
    if absent:
        md += [(f"- not evaluated: {', '.join(absent)} (of the paper's five benchmarks, method.md §5.1; not among this "
               "run's benchmarks)")]
    md += ["", "Evaluation sets:", "",
           evaluation_sizes_table(evals, benchmarks), ""]
    if method_descriptions:
        def label(name: str) -> str:
            return f"`{name}`" if name in runs else name

        logged = {label(name): _percent(share) for name, share in shares.items() if name in method_descriptions}
        md += ["## Methods", "",
               ("Settings in force for each training stage (the configuration with each run's overrides). p is the "
                "teacher's next-token distribution, q the student's; a loss is per response token, averaged. The kept "
                "checkpoint is the one evaluated below. `rollout batches (logged)`: the share of the run's optimizer "
                "steps that actually trained on rollouts rather than dataset examples, from its training log."), "",
               methods_table({label(n): d for n, d in method_descriptions.items()}, logged), ""]
    md += [
        "## ROUGE-L", "",
        ("ROUGE-L F (stemming, max over references, ×100), mean ± sample sd over generation seeds (method.md §5.5). "
        f"`average` = per-seed mean over the {len(done)} evaluated benchmarks ({', '.join(done) or 'none yet'}), then "
        "mean ± sd over seeds; shown for models evaluated on all of them. Bold: the best distillation method per "
        "column (reference rows are not ranked)."), "",
        score_table(rouge, models, done, averages, runs), "",
    ]
    if "average" in links:
        md += [f"![average ROUGE-L]({links['average']})", ""]
    md += ["## BLEU and exact match", "", "BLEU (sacrebleu corpus, ×100):", "", score_table(bleu, models, done), "",
           "Exact match (%):", "", score_table(em, models, done), ""]
    if em and all(score.mean == 0 for benches in em.values() for score in benches.values()):
        md += [("Exact match is 0 for every model and benchmark: free-form answers never equal a reference word for "
               "word here, so this table separates nothing; it is kept because the protocol reports it."), ""]
    md += ["## ROUGE-L by reference length", "",
           ("Reference length = tokens of the first reference under the model's tokenizer. Pooled over the "
           "benchmarks: per seed, the example-weighted mean of each benchmark's bucket mean."), ""]
    md += [bucket_table(buckets, models) if buckets else "No model is evaluated on every benchmark yet.", ""]
    if "by_length" in links:
        md += [f"![ROUGE-L by reference length]({links['by_length']})", ""]
    if stops:
        md += ["## Response length", "",
               ("Tokens generated per answer and share of answers that end with a stop token (the rest run to the "
                "`max new tokens` cap), averaged over the benchmarks per seed, then mean ± sd over seeds."), "",
               length_table(lengths, stops, models), ""]
    md += ["## SWITCH teacher share", "",
           (f"Share of response tokens the teacher emitted in the training rollouts ({100 * PAPER_TEACHER_SHARE:.0f}% "
           "at decay 1/10 by a secondary source on the paper, method.md §1.1). A τ0 not set in the configuration is "
           "calibrated at the start of the run, on the run's starting checkpoint (its `init_from`, e.g. the warmed-up "
           "student), for the target share. The headline figure is the share over all rollout tokens (last column); the calibrated share is measured on "
           "the calibration prompts only, the logged shares per training step."), ""]
    md += [teacher_share_table(outputs, switch_runs, target_share) if switch_runs else "No SWITCH run.", ""]
    if "share" in links:
        md += [f"![teacher share by position]({links['share']})", ""]
    md += ["## Training and evaluation time", "", training_time_table(outputs.summaries, trained, runs), "",
           evaluation_time_table(evals, models), "", compute_summary(outputs, trained, runs, models), ""]
    md += ["## Reading against the paper", "", *[f"- {line}" for line in reading(inputs)],
           *[f"- {line}" for line in _caveats(outputs, runs, done)], ""]
    atomic_write_text(out_md, "\n".join(md))
    for name in ("rouge_average.png", "rouge_by_length.png", "teacher_share_by_position.png"):
        stale = plots / name
        if stale not in written:
            stale.unlink(missing_ok=True)
    return ResultsDoc(out_md, written, missing)
