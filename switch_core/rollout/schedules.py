"""Threshold schedules τ_t of SWITCH's intervention test (the teacher emits token t when JSD_t > τ_t).

t is the position inside the response, t = 0 for the first generated token (method.md §1.1 item 2, [I]).

- ``exponential``: τ_t = τ0·e^(−λ·t), the paper's schedule (method.md §1.1 item 2; λ = 0.1 per token, item 4);
- ``linear``: τ_t = τ0·max(0, 1 − t/T) with horizon T (method.md §7 item 4, the ablation's "linearly decreasing");
- ``constant``: τ_t = τ0 (the ablation's constant threshold).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES: tuple[str, ...] = ("exponential", "linear", "constant")


class ScheduleError(ValueError):
    """Unknown schedule name or out-of-range schedule parameter."""


def validate_schedule(schedule: str, *, tau0: float, decay: float, horizon: int) -> None:
    """Check schedule parameters.

    Raises:
        ScheduleError: ``schedule`` not in :data:`SCHEDULES`, ``tau0`` negative or not finite, ``decay`` negative or
            not finite, or ``horizon < 1``.
    """
    if schedule not in SCHEDULES:
        raise ScheduleError(f"unknown threshold schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if not (math.isfinite(tau0) and tau0 >= 0):
        raise ScheduleError(f"tau0={tau0} must be a finite number >= 0 (JSD is in [0, ln 2 = 0.693] nats)")
    if not (math.isfinite(decay) and decay >= 0):
        raise ScheduleError(f"decay={decay} must be a finite number >= 0 (λ per response token, e.g. 0.1)")
    if horizon < 1:
        raise ScheduleError(f"horizon={horizon} must be >= 1 (tokens over which the linear schedule reaches 0)")


def threshold(schedule: str, steps: Tensor | int, *, tau0: float, decay: float = 0.1, horizon: int = 256) -> Tensor:
    """τ_t for response positions ``steps``.

    Args:
        schedule: ``"exponential"``, ``"linear"`` or ``"constant"``.
        steps: response positions t >= 0, an int or an integer tensor of any shape.
        tau0: τ0 >= 0, in nats (the scale of the natural-log JSD).
        decay: λ >= 0 per token (exponential only).
        horizon: T >= 1 tokens (linear only): τ reaches 0 at t = T.

    Returns:
        float32 tensor shaped like ``steps`` (0-dim for an int), on the device of ``steps``; computed in float64.

    Raises:
        ScheduleError: see :func:`validate_schedule`, or negative steps.
    """
    validate_schedule(schedule, tau0=tau0, decay=decay, horizon=horizon)
    t = torch.as_tensor(steps).to(torch.float64)
    if (t < 0).any():
        raise ScheduleError("response positions t must be >= 0")
    if schedule == "exponential":
        tau = tau0 * torch.exp(-decay * t)
    elif schedule == "linear":
        tau = tau0 * (1.0 - t / horizon).clamp_min(0.0)
    else:
        tau = torch.full_like(t, tau0)
    return tau.to(torch.float32)
