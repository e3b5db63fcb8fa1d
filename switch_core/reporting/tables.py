"""The reports' markdown tables, one implementation each: ROUGE-L of the comparison report (aggregates with n and
limit), scores over seeds (ROUGE-L, BLEU, exact match), ROUGE-L by reference length, response length, evaluation
sets and settings, training and evaluation time, and SWITCH's teacher share.

Reference rows (teacher, untrained and warmed-up student) are labelled as such (:func:`~switch_core.reporting.
references.model_label`) and never ranked.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from switch_core.reporting.loading import metric_series
from switch_core.reporting.references import REFERENCE_MODELS, model_label
from switch_core.reporting.run_outputs import RunOutputs
from switch_core.reporting.scores import (
    Score,
    benchmark_order,
    bucket_low,
    generation_seconds,
    results_table,
    seqkd_seconds,
    training_seconds,
    training_stages,
)
from switch_core.reporting.teacher_share import position_buckets, teacher_share


def _cell(mean: float, sd: float, note: str = "") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f} ± {sd:.2f}{note}"


def markdown_table(metrics: pd.DataFrame) -> str:
    """Markdown table models × benchmarks of ROUGE-L ``mean ± sd`` and the average
    (:func:`~switch_core.reporting.scores.results_table`).

    A benchmark's header carries ``n=`` (examples evaluated) when all models used the same number; otherwise each
    cell carries its own ``(n=…)``. A ``limit`` is always shown (``limit N``) so quick runs are never mistaken for
    full ones. Reference rows (teacher, untrained and warmed-up student) come first, set apart from the methods by a
    ``**methods**`` row.
    """
    benchmarks = benchmark_order(metrics["benchmark"])
    table = results_table(metrics)
    headers, per_cell = ["model"], {}
    for bench in benchmarks:
        part = metrics[metrics["benchmark"] == bench]
        ns, limits = set(part["n"]), {x for x in part["limit"] if x is not None and not pd.isna(x)}
        uniform = len(ns) == 1 and len(limits) <= 1
        per_cell[bench] = not uniform
        label = bench
        if uniform:
            label += f" (n={next(iter(ns))}" + (f", limit {int(next(iter(limits)))}" if limits else "") + ")"
        headers.append(label)
    headers.append("average")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    references = [m for m in table.index if m in REFERENCE_MODELS]
    for model in table.index:
        if references and model not in REFERENCE_MODELS and model == next(m for m in table.index if m not in references):
            lines.append("| **methods** |" + " |" * (len(headers) - 1))  # the reference rows above, set apart
        cells = [model_label(model)]
        for bench in benchmarks:
            note = ""
            if per_cell[bench]:
                row = metrics[(metrics["model"] == model) & (metrics["benchmark"] == bench)]
                if len(row):
                    limit = row["limit"].iloc[0]
                    has_limit = limit is not None and not pd.isna(limit)
                    note = f" (n={row['n'].iloc[0]}" + (f", limit {int(limit)}" if has_limit else "") + ")"
            cells.append(_cell(table.loc[model, f"{bench}_mean"], table.loc[model, f"{bench}_sd"], note))
        avg = table.loc[model, "average"]
        cells.append("–" if pd.isna(avg) else f"{avg:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_table(metrics: pd.DataFrame) -> str:
    """Markdown table of each model's evaluation settings: seeds, max new tokens, limit, weights' dtype, checkpoint
    path."""
    lines = ["| model | seeds | max new tokens | limit | weights | checkpoint |", "|---|---|---|---|---|---|"]
    for model, part in metrics.groupby("model", sort=False):
        seeds = " / ".join(sorted(set(part["seeds"])))
        tokens = " / ".join(str(t) for t in sorted(set(part["max_new_tokens"])))
        limits = {int(x) for x in part["limit"] if x is not None and not pd.isna(x)}
        limit = " / ".join(str(x) for x in sorted(limits)) if limits else "none"
        dtypes = " / ".join(sorted(set(part["dtype"])))
        paths = " / ".join(f"`{p}`" for p in sorted({str(p) for p in part["model_path"]}))
        lines.append(f"| {model_label(model)} | {seeds} | {tokens} | {limit} | {dtypes} | {paths} |")
    return "\n".join(lines)


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
        cells = [model_label(model)]
        for col in headers[1:]:
            score = columns[col].get(model)
            text = "–" if score is None else score.cell()
            cells.append(f"**{text}**" if score is not None and best[col] == model else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def length_table(lengths: Mapping[str, Score], stops: Mapping[str, Score], models: Sequence[str]) -> str:
    """Markdown table per model: mean response length (tokens) and share of answers ended by a stop token (%), each
    averaged over the benchmarks per seed, then mean ± sd over seeds."""
    lines = ["| model | response length (tokens) | ended by a stop token (%) |", "|---|---|---|"]
    for model in models:
        if model in lengths and model in stops:
            stop = stops[model]
            lines.append(f"| {model_label(model)} | {lengths[model].cell()} | "
                         f"{Score(100 * stop.mean, 100 * stop.sd, stop.seeds).cell()} |")
    return "\n".join(lines)


def bucket_table(buckets: Mapping[str, Mapping[str, tuple[Score, int]]], models: Sequence[str]) -> str:
    """Markdown table models × reference-length buckets of pooled ROUGE-L ``mean ± sd`` (``n`` in the header)."""
    labels = sorted({lab for m in models for lab in buckets.get(m, {})}, key=bucket_low)
    sizes = {lab: next(buckets[m][lab][1] for m in models if lab in buckets.get(m, {})) for lab in labels}
    lines = ["| model | " + " | ".join(f"{lab} (n={sizes[lab]})" for lab in labels) + " |",
             "|" + "---|" * (len(labels) + 1)]
    for model in models:
        if model in buckets:
            cells = [buckets[model][lab][0].cell() if lab in buckets[model] else "–" for lab in labels]
            lines.append(f"| {model_label(model)} | " + " | ".join(cells) + " |")
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


def training_time_table(summaries: Mapping[str, dict[str, Any]], trained: Sequence[str], runs: Sequence[str]) -> str:
    """Markdown table of the training stages (``trained`` of teacher / student-sft, then ``runs``): steps, best step,
    wall time in minutes (n/a when not recorded), from their train_summary.json."""
    lines = ["| stage | steps | best step | wall time (min) |", "|---|---|---|---|"]
    for name, label in training_stages(trained, runs):
        summary = summaries.get(name)
        if summary is None:
            lines.append(f"| {label} | not finished | | |")
            continue
        wall = summary.get("wall_seconds")
        minutes = "n/a" if wall is None else f"{float(wall) / 60:.1f}"
        lines.append(f"| {label} | {summary['steps']} | {summary['best_step']} | {minutes} |")
    total = training_seconds(summaries, trained, runs)
    lines.append(f"| **total of the finished stages** | | | **{total / 60:.1f}** |")
    return "\n".join(lines)


def evaluation_time_table(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], models: Sequence[str]) -> str:
    """Markdown table per model: generation seconds summed over its evaluated benchmarks and seeds, tokens/s (n/a when
    no evaluation of the model recorded its throughput); and their total."""
    lines = ["| model | benchmarks | generation time (min) | tokens/s |", "|---|---|---|---|"]
    total = 0.0
    for model in models:
        benches = evaluations.get(model, {})
        if not benches:
            lines.append(f"| {model_label(model)} | not evaluated yet | | |")
            continue
        if not any("throughput" in m for m in benches.values()):
            lines.append(f"| {model_label(model)} | {len(benches)} | n/a | n/a |")
            continue
        seconds, tokens = generation_seconds(evaluations, model)
        total += seconds
        rate = f"{tokens / seconds:.0f}" if seconds > 0 else "–"
        lines.append(f"| {model_label(model)} | {len(benches)} | {seconds / 60:.1f} | {rate} |")
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
        calib_tau = metric_series(log, "calibration/tau0")
        tau_text = "–" if tau0 is None else f"{float(tau0):.4f}" + (" (calibrated)" if len(calib_tau) else " (fixed)")
        calib = metric_series(log, "calibration/teacher_share")
        calib_text = f"{100 * calib['value'].iloc[-1]:.1f}%" if len(calib) else "–"
        if target is not None and len(calib):
            calib_text += f" ({100 * target:.0f}%)"
        shares = metric_series(log, "rollout/teacher_share")
        logged = "–"
        if len(shares):
            first, last = shares.iloc[0], shares.iloc[-1]
            logged = (f"{100 * first['value']:.1f}% (step {int(first['step'])}) → "
                      f"{100 * last['value']:.1f}% (step {int(last['step'])})")
        overall = "–"
        if trace is not None:
            share, tokens = teacher_share(trace)
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
