"""Teacher share of SWITCH rollouts (the paper's 53% diagnostic, docs/METHOD.md §2): per response position from a
rollout trace, and over a range of positions (:func:`teacher_share`, the one place the share is computed)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from switch_core.reporting.loading import ReportInputError, read_trace

POSITION_EDGES: tuple[int, ...] = (5, 10, 20, 50, 100)
"""Response-position buckets of the teacher-share table: [0,4], [5,9], [10,19], [20,49], [50,99], [100,∞)."""
MIN_BUCKET_TOKENS = 20
"""A position bucket with fewer rollout tokens is too thin to compare its share with another's."""


def _teacher_flag(value: Any) -> float:
    if isinstance(value, str):
        return 1.0 if value == "teacher" else 0.0
    return 1.0 if value else 0.0


def teacher_share_by_position(path: str | Path) -> pd.DataFrame:
    """Teacher-emitted tokens and tokens at each response position over all rollouts of a trace file (formats:
    :mod:`switch_core.reporting.loading`; a step written twice counts once).

    Returns:
        Columns ``position, teacher, count, share``: teacher-emitted tokens, tokens, and their ratio at each
        0-based response position (``share`` NaN where ``count`` is 0).

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

    for number, row in read_trace(path):
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


def teacher_share(trace: pd.DataFrame, low: int = 0, high: int | None = None) -> tuple[float, int]:
    """``(teacher tokens / tokens, tokens)`` over response positions ``low..high`` (inclusive; None = to the end) of a
    :func:`teacher_share_by_position` table; the share is NaN when those positions hold no token."""
    inside = trace["position"] >= low
    if high is not None:
        inside &= trace["position"] <= high
    part = trace[inside]
    tokens = float(part["count"].sum())
    return (float(part["teacher"].sum()) / tokens if tokens else math.nan), int(tokens)


def position_buckets(trace: pd.DataFrame, edges: Sequence[int] = POSITION_EDGES) -> list[tuple[str, float, int]]:
    """Teacher share per response-position bucket of a trace: ``[(label, share, tokens)]`` for non-empty buckets.

    Args:
        trace: :func:`teacher_share_by_position` output (position, teacher, count).
        edges: bucket starts after 0: ``[0, e1-1], [e1, e2-1], ..., [ek, ∞)``; the bucket holding the trace's last
            position (``max_new_tokens − 1`` of the rollouts) is cut and labelled there, as the gate profile's
            (:func:`switch_core.reporting.gate_profile.position_buckets`): ``"20–23"`` for 24 tokens, not ``"20–49"``.
    """
    last = int(trace["position"].max()) if len(trace) else -1
    lows = [0, *edges]
    out = []
    for i, low in enumerate(lows):
        if low > last:
            break
        high = min(lows[i + 1] - 1, last) if i + 1 < len(lows) else last
        share, tokens = teacher_share(trace, low, high)
        if tokens > 0:
            out.append((f"{low}–{high}", share, tokens))
    return out


def share_ends(trace: pd.DataFrame) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """``((label, share), (label, share))`` of the first and last position buckets with at least
    :data:`MIN_BUCKET_TOKENS` tokens, or None when fewer than two have that many."""
    buckets = [(label, share) for label, share, tokens in position_buckets(trace) if tokens >= MIN_BUCKET_TOKENS]
    return (buckets[0], buckets[-1]) if len(buckets) >= 2 else None
