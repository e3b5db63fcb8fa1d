"""The reports' plots, as PNG files: ROUGE-L by reference length, average ROUGE-L per model, teacher share by
response position, training curves, the JSD profile by response position.

matplotlib's Agg canvas through ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from switch_core.atomic import atomic_write_bytes
from switch_core.reporting.references import REFERENCE_MODELS
from switch_core.reporting.scores import Score, benchmark_order, bucket_low
from switch_core.reporting.teacher_share import teacher_share


def save_png(fig: Figure, path: str | Path) -> Path:
    """Save a matplotlib figure as a 110-dpi PNG, atomically (:func:`~switch_core.atomic.atomic_write_bytes`).

    Raises:
        OSError: the file cannot be written.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def model_styles(models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One matplotlib line style per model: reference models (teacher, students) grey and dashed, the others solid in
    a colour of tab20 without its greys (18: distinct colours for up to 18 models) with markers cycling, so that up
    to 90 lines never look alike."""
    markers = "os^Dv<>pX*"
    pairs = [c for j, c in enumerate(colormaps["tab20"].colors) if j not in (14, 15)]  # tab20 less its greys
    colours = pairs[0::2] + pairs[1::2]  # the 9 dark ones first, then the 9 light ones
    styles = {}
    methods = [m for m in models if m not in REFERENCE_MODELS]
    greys = ["0.15", "0.45", "0.65"]
    for i, model in enumerate(m for m in models if m in REFERENCE_MODELS):
        styles[model] = {"color": greys[i % len(greys)], "marker": markers[i % len(markers)], "linestyle": "--"}
    for i, model in enumerate(methods):
        styles[model] = {"color": colours[i % len(colours)], "marker": markers[i % len(markers)], "linestyle": "-"}
    return styles


def plot_rouge_by_length(metrics: pd.DataFrame, path: str | Path) -> Path:
    """ROUGE-L by reference-length bucket, one panel per benchmark, one line per model (mean ± sd over seeds; one
    style per model in every panel, :func:`model_styles`; the legend beside the panels).

    Returns:
        The PNG path.
    """
    benchmarks = benchmark_order(metrics["benchmark"])
    styles = model_styles(list(dict.fromkeys(metrics["model"])))
    fig = Figure(figsize=(4.2 * len(benchmarks) + 1.8, 3.8), layout="constrained")
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    for ax, bench in zip(axes, benchmarks):
        part = metrics[metrics["benchmark"] == bench]
        labels = list(dict.fromkeys(label for by in part["by_length"] for label in by))
        labels.sort(key=bucket_low)
        for _, row in part.iterrows():
            ys = [row["by_length"].get(lab, {}).get("mean", math.nan) for lab in labels]
            sds = [row["by_length"].get(lab, {}).get("sd", math.nan) for lab in labels]
            ax.errorbar(range(len(labels)), ys, yerr=sds, capsize=3, markersize=4, label=row["model"],
                        **styles[row["model"]])
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(bench)
        ax.set_xlabel("reference length (tokens)")
        ax.set_ylabel("ROUGE-L")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize="small")
    return save_png(fig, path)


def plot_teacher_share(traces: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Teacher share by response position, one line per run (positions with no token are skipped)."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    draw_teacher_share(fig.subplots(), traces)
    return save_png(fig, path)


def draw_teacher_share(ax: Any, traces: dict[str, pd.DataFrame], labels: Mapping[str, str] | None = None) -> None:
    """Draw on ``ax`` one line per run of its teacher share by response position (positions with no token skipped),
    labelled ``labels[run]`` (default: the run name) with the overall share."""
    for name, frame in traces.items():
        valid = frame[frame["count"] > 0]
        total = teacher_share(frame)[0]
        ax.plot(valid["position"], valid["share"],
                label=f"{(labels or {}).get(name, name)} (overall {100 * total:.1f}%)")
    ax.set_xlabel("response position (tokens)")
    ax.set_ylabel("teacher share")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "metric"


def plot_training_curves(logs: Mapping[str, pd.DataFrame], out_dir: str | Path) -> dict[str, Path]:
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


def plot_jsd_by_position(profile: Mapping[str, Any], thresholds: Mapping[str, Sequence[float]], path: str | Path,
                         *, jsd_max: float) -> Path:
    """The JSD profile by response position (``analysis/gate_profile.json``): the median and the p10–p90 band over
    the profiled tokens at each position, the line ``jsd_max`` (ln 2, the JSD's maximum:
    ``switch_core.rollout.schedules.JSD_MAX``) and each run's τ_t (``[T]`` nats; the y axis ends just above
    ``jsd_max``: a τ_t above it leaves the position to the student)."""
    positions = [p for p in profile["positions"] if p["count"]]
    ts = [p["position"] for p in positions]
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(ts, [p["p10"] for p in positions], [p["p90"] for p in positions], alpha=0.3,
                    label="p10–p90 of the student's tokens")
    ax.plot(ts, [p["p50"] for p in positions], label=f"median JSD ({profile['student']})")
    ax.axhline(jsd_max, color="0.3", linestyle="--", label="ln 2 (largest JSD)")
    for name, tau in thresholds.items():
        ax.plot(range(len(tau)), tau, linestyle=":", label=f"τ_t of {name}")
    ax.set_ylim(0.0, 1.15 * jsd_max)
    ax.set_xlabel("response position (tokens)")
    ax.set_ylabel("JSD to the teacher (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)
