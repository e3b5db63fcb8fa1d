"""The comparison report: tables over models × benchmarks, and plots, written as markdown + CSV + PNG.

Inputs (every one optional except the evaluations):

- evaluations: ``{evals_dir}/<model-name>/<benchmark>/metrics.json`` written by
  :mod:`switch_core.evaluation.evaluate`;
- training logs: JSONL files with one object per line, either the :class:`~switch_core.tracking.JsonlTracker` form
  ``{"event": "metrics", "step": int, "metrics": {"train/loss": ..., ...}}`` or the bare ``{"step": int, "metrics":
  {...}}``; other lines (params, tags, artifacts) are ignored;
- rollout traces: JSONL files whose lines carry per-position sources of one rollout, either
  ``{"sources": ["student", "teacher", ...]}`` (``RolloutBatch.to_rows()``; booleans or 0/1 are accepted too, 1/True
  = teacher) or an aggregate ``{"teacher_share_by_position": [...], "count_by_position": [...]}`` (counts default
  to 1 per position).

The run name of a log or trace file is the name of the folder that holds it. Plots use matplotlib's Agg canvas
through ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from switch_core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from switch_core.evaluation.benchmarks import BENCHMARKS
from switch_core.evaluation.evaluate import METRICS_FILE

TRAIN_LOG_GLOB = "**/metrics.jsonl"
"""Default glob (under ``--runs``) of the training logs the report reads."""

TRACE_GLOB = "**/rollout_traces.jsonl"
"""Default glob (under ``--runs``) of the rollout traces the report reads."""


class ReportInputError(ValueError):
    """Missing or unreadable report inputs (no metrics.json found, a malformed file)."""


def collect_metrics(evals_dir: str | Path, models: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, benchmark) from ``{evals_dir}/<model>/<benchmark>/metrics.json``.

    Args:
        evals_dir: the evaluations folder.
        models: model folder names to include, in this order; None = every folder holding a metrics.json (sorted).

    Returns:
        Columns ``model, benchmark, rouge_l_mean, rouge_l_sd, bleu_mean, bleu_sd, exact_match_mean,
        exact_match_sd, n, available, limit, seeds, max_new_tokens, model_path, by_length`` (``by_length`` is the
        aggregate dict ``{label: {"n", "mean", "sd"}}``); ``limit`` is None when the full set was used.

    Raises:
        ReportInputError: no metrics.json found, a requested model has none, or a file is not valid JSON.
    """
    root = Path(evals_dir)
    files = sorted(root.glob(f"*/*/{METRICS_FILE}"))
    if models is not None:
        wanted = list(models)
        missing = [m for m in wanted if not any(f.parent.parent.name == m for f in files)]
        if missing:
            raise ReportInputError(f"no {METRICS_FILE} under {root}/<model>/<benchmark>/ for model(s) {missing}")
        files = [f for m in wanted for f in files if f.parent.parent.name == m]
    if not files:
        raise ReportInputError(
            f"no evaluation results under {root}: expected {root}/<model>/<benchmark>/{METRICS_FILE} "
            "(run `switch-kd evaluate --out {root}/<model>` first)"
        )
    rows = []
    for path in files:
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            agg = m["aggregate"]
            rows.append({
                "model": path.parent.parent.name,
                "benchmark": m.get("benchmark", path.parent.name),
                "rouge_l_mean": agg["rouge_l"]["mean"],
                "rouge_l_sd": agg["rouge_l"]["sd"],
                "bleu_mean": agg["bleu"]["mean"],
                "bleu_sd": agg["bleu"]["sd"],
                "exact_match_mean": agg["exact_match"]["mean"],
                "exact_match_sd": agg["exact_match"]["sd"],
                "n": m["num_examples"],
                "available": m.get("available_examples"),
                "limit": m.get("limit"),
                "seeds": ",".join(str(s) for s in m["protocol"]["seeds"]),
                "max_new_tokens": m["protocol"]["max_new_tokens"],
                "model_path": m.get("model"),
                "by_length": agg.get("by_length", {}),
            })
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ReportInputError(f"{path}: not a metrics.json written by switch-kd evaluate ({err!r})") from None
    return pd.DataFrame(rows)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Save a matplotlib figure as a 110-dpi PNG, atomically (:func:`~switch_core.atomic.atomic_write_bytes`).

    Raises:
        OSError: the file cannot be written.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def _benchmark_order(names: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(names))
    registered = [b for b in BENCHMARKS if b in present]
    return registered + sorted(b for b in present if b not in registered)


def results_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Wide numeric table: one row per model; ``<benchmark>_mean``, ``<benchmark>_sd`` per benchmark, ``average``.

    ``average`` is the mean over benchmarks of the ROUGE-L means, given only for models evaluated on every benchmark
    of the table (NaN otherwise).

    Args:
        metrics: :func:`collect_metrics` output.

    Returns:
        DataFrame indexed by model (input order).
    """
    benchmarks = _benchmark_order(metrics["benchmark"])
    models = list(dict.fromkeys(metrics["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for bench in benchmarks:
        part = metrics[metrics["benchmark"] == bench].set_index("model")
        table[f"{bench}_mean"] = part["rouge_l_mean"].reindex(models)
        table[f"{bench}_sd"] = part["rouge_l_sd"].reindex(models)
    means = table[[f"{b}_mean" for b in benchmarks]]
    table["average"] = means.mean(axis=1).where(means.notna().all(axis=1))
    return table


def compact_metrics(metrics: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {benchmark: {rouge_l, rouge_l_sd, bleu, exact_match}}}`` (0–100 scale), the file behind
    ``dvc metrics show`` / ``dvc metrics diff``.

    Args:
        metrics: :func:`collect_metrics` output.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in metrics.itertuples():
        out.setdefault(row.model, {})[row.benchmark] = {
            "rouge_l": round(float(row.rouge_l_mean), 4), "rouge_l_sd": round(float(row.rouge_l_sd), 4),
            "bleu": round(float(row.bleu_mean), 4), "exact_match": round(float(row.exact_match_mean), 4),
        }
    return out


def _cell(mean: float, sd: float, note: str = "") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f} ± {sd:.2f}{note}"


def markdown_table(metrics: pd.DataFrame) -> str:
    """Markdown table models × benchmarks of ROUGE-L ``mean ± sd`` and the average (see :func:`results_table`).

    A benchmark's header carries ``n=`` (examples evaluated) when all models used the same number; otherwise each
    cell carries its own ``(n=…)``. A ``limit`` is always shown (``limit N``) so quick runs are never mistaken for
    full ones.
    """
    benchmarks = _benchmark_order(metrics["benchmark"])
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
    for model in table.index:
        cells = [model]
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
    """Markdown table of each model's evaluation settings: seeds, max new tokens, limit, checkpoint path."""
    lines = ["| model | seeds | max new tokens | limit | checkpoint |", "|---|---|---|---|---|"]
    for model, part in metrics.groupby("model", sort=False):
        seeds = " / ".join(sorted(set(part["seeds"])))
        tokens = " / ".join(str(t) for t in sorted(set(part["max_new_tokens"])))
        limits = {int(x) for x in part["limit"] if x is not None and not pd.isna(x)}
        limit = " / ".join(str(x) for x in sorted(limits)) if limits else "none"
        paths = " / ".join(f"`{p}`" for p in sorted({str(p) for p in part["model_path"]}))
        lines.append(f"| {model} | {seeds} | {tokens} | {limit} | {paths} |")
    return "\n".join(lines)


def plot_rouge_by_length(metrics: pd.DataFrame, path: str | Path) -> Path:
    """ROUGE-L by reference-length bucket, one panel per benchmark, one line per model (mean ± sd over seeds).

    Returns:
        The PNG path.
    """
    benchmarks = _benchmark_order(metrics["benchmark"])
    fig = Figure(figsize=(4.2 * len(benchmarks), 3.6), layout="constrained")
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    for ax, bench in zip(axes, benchmarks):
        part = metrics[metrics["benchmark"] == bench]
        labels = list(dict.fromkeys(label for by in part["by_length"] for label in by))
        labels.sort(key=lambda s: int(s[1:].split(",")[0]))
        for _, row in part.iterrows():
            ys = [row["by_length"].get(lab, {}).get("mean", math.nan) for lab in labels]
            sds = [row["by_length"].get(lab, {}).get("sd", math.nan) for lab in labels]
            ax.errorbar(range(len(labels)), ys, yerr=sds, marker="o", capsize=3, label=row["model"])
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(bench)
        ax.set_xlabel("reference length (tokens)")
        ax.set_ylabel("ROUGE-L")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return save_png(fig, path)


def _run_name(path: Path) -> str:
    return path.parent.name or path.stem


def find_files(patterns: Sequence[str], base: str | Path | None) -> list[Path]:
    """Files matching glob patterns: absolute ones as they are, relative ones under ``base`` (skipped when ``base`` is
    None); an existing file path matches itself.

    Returns:
        Sorted unique paths (empty when nothing matches).
    """
    found: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_file():
            found.add(p)
        elif p.is_absolute():
            found.update(f for f in Path(p.anchor).glob(str(p.relative_to(p.anchor))) if f.is_file())
        elif base is not None:
            found.update(f for f in Path(base).glob(pattern) if f.is_file())
    return sorted(found)


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportInputError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if isinstance(row, dict):
            yield number, row


def read_training_log(path: str | Path) -> pd.DataFrame:
    """Metric values of one training log as a long table.

    Returns:
        Columns ``step, metric, value`` (floats; non-numeric values such as ``"nan"`` become NaN).

    Raises:
        ReportInputError: a line that is not JSON (names file and line).
    """
    rows = []
    for _, row in _jsonl(Path(path)):
        if row.get("event", "metrics") != "metrics" or "step" not in row or not isinstance(row.get("metrics"), dict):
            continue
        for name, value in row["metrics"].items():
            try:
                rows.append({"step": int(row["step"]), "metric": str(name), "value": float(value)})
            except (TypeError, ValueError):
                continue
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def _teacher_flag(value: Any) -> float:
    if isinstance(value, str):
        return 1.0 if value == "teacher" else 0.0
    return 1.0 if value else 0.0


def teacher_share_by_position(path: str | Path) -> pd.DataFrame:
    """Teacher share at each response position over all rollouts in a trace file (method.md §2, 53% diagnostic).

    Returns:
        Columns ``position, teacher, count, share``: teacher-emitted tokens, tokens, and their ratio at each
        0-based response position.

    Raises:
        ReportInputError: a line that is not JSON, or lengths of ``teacher_share_by_position`` and
            ``count_by_position`` that differ.
    """
    teacher: list[float] = []
    count: list[float] = []

    def add(position: int, t: float, c: float) -> None:
        while len(count) <= position:
            teacher.append(0.0)
            count.append(0.0)
        teacher[position] += t
        count[position] += c

    for number, row in _jsonl(Path(path)):
        if isinstance(row.get("sources"), list):
            for pos, src in enumerate(row["sources"]):
                add(pos, _teacher_flag(src), 1.0)
        elif isinstance(row.get("teacher_share_by_position"), list):
            shares = row["teacher_share_by_position"]
            counts = row.get("count_by_position", [1] * len(shares))
            if len(counts) != len(shares):
                raise ReportInputError(
                    f"{path}:{number}: teacher_share_by_position has {len(shares)} entries, count_by_position "
                    f"{len(counts)}"
                )
            for pos, (share, c) in enumerate(zip(shares, counts)):
                if share is not None and not (isinstance(share, float) and math.isnan(share)) and c:
                    add(pos, float(share) * float(c), float(c))
    frame = pd.DataFrame({"position": range(len(count)), "teacher": teacher, "count": count})
    frame["share"] = frame["teacher"] / frame["count"].where(frame["count"] > 0)
    return frame


def plot_teacher_share(traces: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Teacher share by response position, one line per run (positions with no token are skipped)."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for name, frame in traces.items():
        valid = frame[frame["count"] > 0]
        total = valid["teacher"].sum() / valid["count"].sum() if len(valid) else math.nan
        ax.plot(valid["position"], valid["share"], label=f"{name} (overall {100 * total:.1f}%)")
    ax.set_xlabel("response position (tokens)")
    ax.set_ylabel("teacher share")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "metric"


def plot_training_curves(logs: dict[str, pd.DataFrame], out_dir: str | Path) -> dict[str, Path]:
    """One PNG per metric name (``curve_<metric>.png``), one line per run, value against optimizer step.

    Timings (metrics named ``*seconds`` / ``*per_second``) are left out: they differ between two runs of the same
    inputs, and the report is a tracked output that must not.

    Returns:
        Metric name -> PNG path, in sorted metric order.
    """
    metrics = sorted({
        m for frame in logs.values() for m in frame["metric"].unique() if not m.endswith(("seconds", "per_second"))
    })
    written: dict[str, Path] = {}
    for metric in metrics:
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for name, frame in logs.items():
            part = frame[frame["metric"] == metric].sort_values("step")
            if len(part):
                ax.plot(part["step"], part["value"], marker="." if len(part) < 30 else None, label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        written[metric] = save_png(fig, Path(out_dir) / f"curve_{_slug(metric)}.png")
    return written


@dataclass
class ReportResult:
    """Files written by :func:`build_report`, and the inputs it used (for the caller's summary)."""

    markdown: Path
    csv: Path
    csv_long: Path
    plots: list[Path] = field(default_factory=list)
    train_logs: list[Path] = field(default_factory=list)
    traces: list[Path] = field(default_factory=list)


def _names(paths: Sequence[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in paths:
        name = _run_name(path)
        names[name if name not in names else str(path)] = path
    return names


def build_report(
    evals_dir: str | Path,
    out_dir: str | Path,
    *,
    runs_dir: str | Path | None = None,
    train_logs: Sequence[str] = (TRAIN_LOG_GLOB,),
    traces: Sequence[str] = (TRACE_GLOB,),
    models: Sequence[str] | None = None,
    title: str = "switch-kd comparison",
) -> ReportResult:
    """Write ``report.md``, ``results.csv`` (wide), ``results_long.csv`` and the PNG plots to ``out_dir``.

    Args:
        evals_dir: ``{evals_dir}/<model>/<benchmark>/metrics.json``.
        out_dir: output folder (created).
        runs_dir: base of relative ``train_logs`` / ``traces`` globs; None = no training logs or traces unless the
            globs are absolute or existing paths.
        train_logs: globs or paths of training-log JSONL files (see the module docstring).
        traces: globs or paths of rollout-trace JSONL files.
        models: model names to include, in order (default all).
        title: first heading of the markdown.

    Returns:
        A :class:`ReportResult`; missing training logs or traces only leave their sections out (the markdown says
        which globs matched nothing).

    Raises:
        ReportInputError: no evaluation results, or a malformed input file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = collect_metrics(evals_dir, models)
    wide = results_table(metrics)
    csv_path, long_path = out / "results.csv", out / "results_long.csv"
    atomic_write_text(csv_path, wide.to_csv(float_format="%.4f"))
    atomic_write_text(long_path, metrics.drop(columns=["by_length"]).to_csv(index=False, float_format="%.4f"))
    atomic_write_json(out / "metrics.json", compact_metrics(metrics))
    plots = [plot_rouge_by_length(metrics, out / "rouge_by_length.png")]

    log_files, trace_files = find_files(train_logs, runs_dir), find_files(traces, runs_dir)
    where = f" under `{runs_dir}`" if runs_dir else ""
    md = [
        f"# {title}", "", f"Evaluations: `{Path(evals_dir)}`.", "",
        "## ROUGE-L (mean ± sd over seeds)", "",
        (
            "ROUGE-L F-measure with stemming, max over references, ×100, averaged over examples; mean and sample sd "
            "over generation seeds (method.md §5.5). `average` = mean of the benchmark means, shown only for models "
            "evaluated on every benchmark. `n` = examples evaluated; `limit` marks a seeded subsample (a quick run, "
            "not comparable to full-set numbers)."
        ),
        "", markdown_table(metrics), "",
        "BLEU (sacrebleu corpus) and exact match are in `results_long.csv`.", "",
        "Settings per model:", "", settings_table(metrics), "",
        "## ROUGE-L by reference length", "",
        "Reference length = tokens of the first reference under each evaluated model's tokenizer.", "",
        "![ROUGE-L by reference length](rouge_by_length.png)", "",
        "## Teacher share by response position (SWITCH rollouts)", "",
    ]
    if trace_files:
        frames = {name: teacher_share_by_position(path) for name, path in _names(trace_files).items()}
        plots.append(plot_teacher_share(frames, out / "teacher_share_by_position.png"))
        md += ["Sources: " + ", ".join(f"`{p}`" for p in trace_files), "",
               "![teacher share by position](teacher_share_by_position.png)", ""]
    else:
        md += [f"No rollout traces matched {list(traces)}{where}.", ""]
    md += ["## Training curves", ""]
    if log_files:
        curves = plot_training_curves({name: read_training_log(p) for name, p in _names(log_files).items()}, out)
        plots += list(curves.values())
        md += ["Sources: " + ", ".join(f"`{p}`" for p in log_files), ""]
        md += [f"![{metric}]({path.name})" for metric, path in curves.items()] + [""]
    else:
        md += [f"No training logs matched {list(train_logs)}{where}.", ""]
    md_path = atomic_write_text(out / "report.md", "\n".join(md))
    return ReportResult(md_path, csv_path, long_path, plots, log_files, trace_files)
