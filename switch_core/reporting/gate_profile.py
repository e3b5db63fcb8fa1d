"""The JSD profile of a student against its teacher by response position: where SWITCH's gate could act.

The gate sends response position t to the teacher when JSD_t > τ_t (docs/METHOD.md §1.1), and JSD_t <= ln 2
(§1.4), so how the student's JSD to the teacher is spread over the positions decides what a schedule τ_t does. The
``gate-profile`` stage (:mod:`switch_core.commands.gate_profile`) decodes dev prompts with the warmed-up student
alone and records the gate's JSD at every token; this module turns those per-token values into the profile
(:func:`jsd_profile`: quantiles, mean and count per position and per position bucket) and into the share of tokens
whose JSD exceeds a schedule's τ_t (:func:`exceed_shares`). Pure functions of the values: the same values give the
same profile, bit for bit.

Quantiles are the linear interpolation between order statistics (Hyndman & Fan's definition 7, numpy's default):
for sorted x_0 <= ... <= x_{n−1} and q in [0, 1], h = (n − 1)·q and Q(q) = x_⌊h⌋ + (h − ⌊h⌋)·(x_⌊h⌋+1 − x_⌊h⌋).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

POSITION_EDGES: tuple[int, ...] = (10, 20, 50, 100)
"""Response-position buckets of the profile: [0, 9], [10, 19], [20, 49], [50, 99], [100, ∞)."""
QUANTILES: tuple[tuple[str, float], ...] = (("p10", 0.1), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p90", 0.9))
"""The profile's quantiles: name and level."""


class GateProfileError(ValueError):
    """Per-token JSD values that cannot make a profile (a negative or non-finite value, a row longer than the
    positions profiled, a threshold list too short)."""


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` by linear interpolation between order statistics (module docstring).

    Args:
        values: a non-empty sequence of numbers (any order).
        q: the level, in [0, 1].

    Raises:
        ValueError: ``values`` is empty or ``q`` outside [0, 1].
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level {q} must be in [0, 1]")
    x = sorted(float(v) for v in values)
    h = (len(x) - 1) * q
    low = math.floor(h)
    if low + 1 >= len(x):
        return x[-1]
    return x[low] + (h - low) * (x[low + 1] - x[low])


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"count", "mean", "p10", "p25", "p50", "p75", "p90"}`` of ``values`` (mean by ``math.fsum``); the statistics
    are None when ``values`` is empty."""
    if not values:
        return {"count": 0, "mean": None} | {name: None for name, _ in QUANTILES}
    return ({"count": len(values), "mean": math.fsum(values) / len(values)}
            | {name: quantile(values, level) for name, level in QUANTILES})


def position_buckets(steps: int, edges: Sequence[int] = POSITION_EDGES) -> list[tuple[int, int]]:
    """``[(low, high)]`` inclusive response-position ranges of the buckets that hold a position ``t < steps``
    (the last one cut at ``steps − 1``)."""
    lows = [0, *edges]
    out = []
    for i, low in enumerate(lows):
        if low >= steps:
            break
        high = lows[i + 1] - 1 if i + 1 < len(lows) else steps - 1
        out.append((low, min(high, steps - 1)))
    return out


def bucket_label(low: int, high: int) -> str:
    """A bucket's name, its first and last position: ``"0–9"``."""
    return f"{low}–{high}"


def _by_position(jsd: Sequence[Sequence[float]], steps: int) -> list[list[float]]:
    """The values at each response position t < ``steps``.

    Raises:
        GateProfileError: a row longer than ``steps``, or a value that is negative or not finite.
    """
    columns: list[list[float]] = [[] for _ in range(steps)]
    for r, row in enumerate(jsd):
        if len(row) > steps:
            raise GateProfileError(f"row {r} holds {len(row)} values, more than the {steps} positions profiled")
        for t, value in enumerate(row):
            value = float(value)
            if not (math.isfinite(value) and value >= 0):
                raise GateProfileError(f"row {r}, position {t}: JSD {value} must be a finite number >= 0 (was the "
                                       "divergence computed? the rollout needs compute_divergence)")
            columns[t].append(value)
    return columns


def jsd_profile(jsd: Sequence[Sequence[float]], *, steps: int) -> dict[str, Any]:
    """The per-position JSD profile of rollouts.

    Args:
        jsd: per rollout, the gate's JSD (nats, in [0, ln 2]) at each of its response tokens, position 0 first
            (``RolloutBatch.to_rows()``'s ``divergence``).
        steps: the positions profiled (``max_new_tokens`` of the rollouts), >= 1.

    Returns:
        ``{"rollouts", "tokens", "overall", "buckets", "positions"}``: ``overall`` the :func:`summary` of every value;
        ``buckets`` a list of ``{"low", "high", "label"} | summary`` per :func:`position_buckets` range; ``positions``
        ``{"position"} | summary`` per position t < ``steps``.

    Raises:
        GateProfileError: see :func:`_by_position`; ``steps < 1``.
    """
    if steps < 1:
        raise GateProfileError(f"steps={steps} must be >= 1")
    columns = _by_position(jsd, steps)
    every = [v for column in columns for v in column]
    buckets = [
        {"low": low, "high": high, "label": bucket_label(low, high)}
        | summary([v for column in columns[low : high + 1] for v in column])
        for low, high in position_buckets(steps)
    ]
    return {
        "rollouts": len(jsd), "tokens": len(every), "overall": summary(every), "buckets": buckets,
        "positions": [{"position": t} | summary(column) for t, column in enumerate(columns)],
    }


def exceed_shares(jsd: Sequence[Sequence[float]], tau: Sequence[float], *, steps: int) -> dict[str, Any]:
    """The share of tokens whose JSD exceeds τ_t, where the gate would hand position t to the teacher
    (JSD_t > τ_t, docs/METHOD.md §1.1), overall and per position bucket.

    Args:
        jsd: per-token JSD per rollout, as for :func:`jsd_profile`.
        tau: τ_t for t = 0 .. ``steps − 1`` (nats), e.g. the float32 thresholds of
            :func:`switch_core.rollout.schedules.threshold` that the engine compares with.
        steps: the positions profiled.

    Returns:
        ``{"overall": share or None, "buckets": [{"label", "share", "count"}]}``: share None where no token.

    Raises:
        GateProfileError: ``tau`` shorter than ``steps``; see :func:`_by_position`.
    """
    if len(tau) < steps:
        raise GateProfileError(f"{len(tau)} thresholds for {steps} positions")
    columns = _by_position(jsd, steps)
    above = [sum(v > float(tau[t]) for v in column) for t, column in enumerate(columns)]
    counts = [len(column) for column in columns]

    def share(low: int, high: int) -> tuple[float | None, int]:
        n = sum(counts[low : high + 1])
        return (sum(above[low : high + 1]) / n if n else None), n

    buckets = []
    for low, high in position_buckets(steps):
        value, n = share(low, high)
        buckets.append({"label": bucket_label(low, high), "share": value, "count": n})
    return {"overall": share(0, steps - 1)[0], "buckets": buckets}


def schedule_thresholds(spec: Mapping[str, Any], steps: int) -> list[float]:
    """τ_t for t = 0 .. ``steps − 1`` of a run's schedule, as the engine computes them (float32,
    :func:`switch_core.rollout.schedules.threshold`).

    Args:
        spec: ``{"tau0", "schedule", "decay", "horizon"}`` (``horizon`` of the linear schedule; None there means the
            run's ``max_new_tokens``, which ``spec["max_new_tokens"]`` then gives).
        steps: positions wanted, >= 1.

    Raises:
        switch_core.rollout.ScheduleError: a bad schedule or parameter.
    """
    import torch

    from switch_core.rollout.schedules import threshold

    horizon = spec.get("horizon") or spec.get("max_new_tokens")
    values = threshold(spec["schedule"], torch.arange(steps), tau0=float(spec["tau0"]), decay=spec.get("decay"),
                       horizon=horizon)
    return [float(v) for v in values.tolist()]
