"""Threshold schedules τ_t of SWITCH's intervention test (the teacher emits token t when JSD_t > τ_t).

t is the position inside the response, t = 0 for the first generated token (docs/METHOD.md §1.1 item 2, [I]).

- ``exponential``: τ_t = τ0·e^(−λ·t), the paper's schedule (docs/METHOD.md §1.1 item 2; λ = 0.1 per token, item 4);
- ``linear``: τ_t = τ0·max(0, 1 − t/T) with horizon T (docs/METHOD.md §7 item 4, the ablation's "linearly decreasing");
- ``constant``: τ_t = τ0 (the ablation's constant threshold).

The symmetric JSD is at most ln 2 (:data:`JSD_MAX`), so where τ_t >= ln 2 the teacher cannot intervene:
:func:`student_only_positions`, :func:`never_crossed_tau0` and :func:`gate_summary` give that range.
"""
from __future__ import annotations

import math
import typing

import torch
from torch import Tensor

from switch_core.config import ScheduleName

SCHEDULES: tuple[str, ...] = typing.get_args(ScheduleName)
JSD_MAX = math.log(2.0)
"""Largest value of the symmetric JSD (β = 0.5) in nats, reached by distributions with disjoint supports
(docs/METHOD.md §1.1 item 1)."""


class ScheduleError(ValueError):
    """Unknown schedule name, missing or out-of-range schedule parameter."""


def _check(schedule: str, tau0: float, decay: float | None, horizon: int | None) -> None:
    """Raises ScheduleError for an unknown schedule, a bad τ0, or a missing / bad parameter the schedule uses."""
    if schedule not in SCHEDULES:
        raise ScheduleError(f"unknown threshold schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if not (math.isfinite(tau0) and tau0 >= 0):
        raise ScheduleError(f"tau0={tau0} must be a finite number >= 0 (JSD is in [0, ln 2 = 0.693] nats)")
    if schedule == "exponential" and (decay is None or not (math.isfinite(decay) and decay >= 0)):
        raise ScheduleError(f"decay={decay} must be a finite number >= 0 (λ per response token, e.g. 0.1)")
    if schedule == "linear" and (horizon is None or horizon < 1):
        raise ScheduleError(f"horizon={horizon} must be >= 1 (tokens over which the linear schedule reaches 0)")


def threshold(
    schedule: str, steps: Tensor | int, *, tau0: float, decay: float | None = None, horizon: int | None = None
) -> Tensor:
    """τ_t for response positions ``steps``.

    Args:
        schedule: ``"exponential"``, ``"linear"`` or ``"constant"``.
        steps: response positions t >= 0, an int or an integer tensor of any shape.
        tau0: τ0 >= 0, in nats (the scale of the natural-log JSD).
        decay: λ >= 0 per token; required by (and only used by) the exponential schedule.
        horizon: T >= 1 tokens, τ reaches 0 at t = T; required by (and only used by) the linear schedule.

    Returns:
        float32 tensor shaped like ``steps`` (0-dim for an int), on the device of ``steps``; computed in float64.

    Raises:
        ScheduleError: unknown schedule, ``tau0`` negative or not finite, ``decay`` missing, negative or not finite
            (exponential), ``horizon`` missing or < 1 (linear), or negative steps.
    """
    return _threshold64(schedule, steps, tau0=tau0, decay=decay, horizon=horizon).to(torch.float32)


def _threshold64(
    schedule: str, steps: Tensor | int, *, tau0: float, decay: float | None, horizon: int | None
) -> Tensor:
    """τ_t as :func:`threshold`, in float64."""
    _check(schedule, tau0, decay, horizon)
    t = torch.as_tensor(steps).to(torch.float64)
    if (t < 0).any():
        raise ScheduleError("response positions t must be >= 0")
    if schedule == "exponential":
        return tau0 * torch.exp(-decay * t)
    if schedule == "linear":
        return tau0 * (1.0 - t / horizon).clamp_min(0.0)
    return torch.full_like(t, tau0)


def student_only_positions(
    schedule: str, *, tau0: float, decay: float | None = None, horizon: int | None = None
) -> float:
    """How many leading response positions the student writes alone because τ_t exceeds the largest JSD.

    The gate sends position t to the teacher only when JSD_t > τ_t, and JSD_t <= ln 2, so every t < x with
    τ_t > ln 2 is the student's: x = ln(τ0 / ln 2) / λ (exponential), T·(1 − ln 2 / τ0) (linear), inf (constant).

    Args:
        schedule, tau0, decay, horizon: as for :func:`threshold`.

    Returns:
        x >= 0 in tokens (a real number: positions t < x are the student's alone); 0 when τ0 <= ln 2, inf when the
        threshold never falls to ln 2 (constant schedule, or λ = 0).

    Raises:
        ScheduleError: as :func:`threshold`.
    """
    _check(schedule, tau0, decay, horizon)
    if tau0 <= JSD_MAX:
        return 0.0
    if schedule == "exponential":
        return math.inf if decay == 0 else math.log(tau0 / JSD_MAX) / decay
    if schedule == "linear":
        return horizon * (1.0 - JSD_MAX / tau0)
    return math.inf


def never_crossed_tau0(schedule: str, *, steps: int, decay: float | None = None, horizon: int | None = None) -> float:
    """The smallest τ0 for which τ_t >= ln 2 at every position t < ``steps``: from there on the teacher never
    intervenes in a response of ``steps`` tokens.

    Computed as ``ln 2 / min_t (τ_t / τ0)`` on the float32 thresholds of :func:`threshold` (τ0 = 1); e.g.
    ``ln 2 · e^(λ·(steps − 1))`` for the exponential schedule.

    Returns:
        τ0 in nats; inf when the threshold reaches 0 within ``steps`` (linear schedule with T <= steps − 1).

    Raises:
        ScheduleError: as :func:`threshold`, or ``steps < 1``.
    """
    if steps < 1:
        raise ScheduleError(f"steps={steps} must be >= 1")
    ratios = threshold(schedule, torch.arange(steps), tau0=1.0, decay=decay, horizon=horizon).to(torch.float64)
    smallest = float(ratios.min())
    return JSD_MAX / smallest if smallest > 0 else math.inf


def gate_summary(
    schedule: str, *, tau0: float, steps: int, decay: float | None = None, horizon: int | None = None
) -> dict[str, float | int | bool]:
    """Where the gate can act over a response of ``steps`` positions (what a run's summary records, docs/METHOD.md
    §1.4).

    The teacher takes position t only when JSD_t > τ_t, and JSD_t <= ln 2, so the gate can choose at t only where
    τ_t < ln 2 (compared in float64).

    Args:
        schedule, tau0, decay, horizon: as for :func:`threshold`.
        steps: response positions considered, >= 1 (``rollout.max_new_tokens``).

    Returns:
        ``{"tau0", "position_switch", "student_only_positions", "gate_active_share"}``: ``position_switch`` is
        τ0 > ln 2 (the gate then acts as a hand-over at a fixed position); ``student_only_positions`` the number of
        positions t < ``steps`` with τ_t >= ln 2 (the student's by construction); ``gate_active_share`` the share
        of the ``steps`` positions with τ_t < ln 2.

    Raises:
        ScheduleError: as :func:`threshold`, or ``steps < 1``.
    """
    if steps < 1:
        raise ScheduleError(f"steps={steps} must be >= 1")
    tau = _threshold64(schedule, torch.arange(steps), tau0=tau0, decay=decay, horizon=horizon)
    blocked = int((tau >= JSD_MAX).sum())
    return {
        "tau0": float(tau0), "position_switch": tau0 > JSD_MAX, "student_only_positions": blocked,
        "gate_active_share": (steps - blocked) / steps,
    }
