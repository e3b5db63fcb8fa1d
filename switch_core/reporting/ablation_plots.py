"""The plots of docs/ABLATIONS.md, as PNG files (matplotlib's Agg canvas through ``Figure``, saved by
:func:`~switch_core.reporting.plots.save_png`, so the same inputs give the same bytes): per ablation the average
ROUGE-L of each cell with seed-sd error bars, beside the teacher share by response position of each cell; and the
gap ablation's SWITCH and baseline scores on the two pairs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from switch_core.reporting.ablations import GapPair
from switch_core.reporting.plots import draw_teacher_share, save_png
from switch_core.reporting.scores import Score


def _sd(score: Score) -> float:
    return 0.0 if math.isnan(score.sd) else score.sd


def plot_ablation(averages: Mapping[str, Score], names: Sequence[str], labels: Mapping[str, str],
                  references: Sequence[str], traces: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Average ROUGE-L per row (``names`` order, dots labelled by ``labels``, ``references`` in grey) with seed-sd error
    bars, on an axis spanning the scores (not from 0); with ``traces``, a second panel of the teacher share by response
    position, one line per traced cell (positions with no token skipped).

    Returns:
        The PNG path.
    """
    shown = [n for n in names if n in averages]
    panels = 2 if traces else 1
    fig = Figure(figsize=(6.4 * panels, 0.45 * len(shown) + 1.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    for i, name in enumerate(shown):  # dots, not bars: the axis spans the scores, so differences of tenths show
        ax.errorbar(averages[name].mean, i, xerr=_sd(averages[name]), fmt="o", capsize=3,
                    color="0.5" if name in references else "C0")
    ax.set_yticks(range(len(shown)), [labels.get(n, n) for n in shown])
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("average ROUGE-L over benchmarks (mean ± sd over seeds)")
    ax.grid(axis="x", alpha=0.3)
    if traces:
        draw_teacher_share(axes[1], traces, labels)
    return save_png(fig, path)


def plot_gap(pairs: Sequence[GapPair], switch: str, baseline: str, path: str | Path) -> Path:
    """Average ROUGE-L of SWITCH, the baseline and the student they started from on each pair (grouped bars, seed-sd
    error bars; a missing score is left out), each pair labelled with its student's size when known.

    Returns:
        The PNG path.
    """
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    bars = ((switch, "C0", lambda p: p.switch), (baseline, "C1", lambda p: p.baseline),
            ("warmed-up student", "0.6", lambda p: p.student and p.student[1]))
    for k, (name, color, get) in enumerate(bars):
        xs = [i + (k - 1) * width for i, p in enumerate(pairs) if get(p) is not None]
        scores = [get(p) for p in pairs if get(p) is not None]
        ax.bar(xs, [s.mean for s in scores], width, yerr=[_sd(s) for s in scores], capsize=3, label=name, color=color)
    ax.set_xticks(range(len(pairs)), [p.label + (f"\n({text})" if (text := p.layers_text()) else "") for p in pairs])
    ax.set_ylabel("average ROUGE-L (mean ± sd over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    return save_png(fig, path)
