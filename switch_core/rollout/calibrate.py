"""Calibrate SWITCH's τ0 to a target teacher share.

The paper does not give τ0 (method.md §1.2); it reports that with its decay factor about 53% of the generated tokens
come from the teacher (method.md §1.1 item 4). This module searches τ0 so that SWITCH rollouts of the given student
and teacher on given prompts reach a target teacher share.

The share depends on the tokens actually chosen (a teacher token changes the prefix of every later step), so each
candidate τ0 is evaluated with real rollouts; the same seeds are used for every candidate (common random numbers),
which makes the share close to non-increasing in τ0. The search: evaluate τ0 = ln 2 (the JSD maximum: above it the
teacher never intervenes at t = 0, but a decaying schedule still lets it in later); while the share is above target,
double τ0 (up to the value at which τ_t >= ln 2 for every step); then bisect the bracket (geometric midpoint once the
lower end is > 0, since the useful τ0 may span orders of magnitude under an exponential schedule). The evaluated τ0
with the share closest to the target is returned.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from switch_core.rollout.engine import RolloutSettings, model_device, rollout
from switch_core.rollout.schedules import threshold

JSD_MAX = math.log(2.0)
"""Largest value of the symmetric JSD in nats (method.md §1.1 item 1)."""


class CalibrationError(ValueError):
    """Bad calibration arguments (target share, tolerance, budget, prompts or strategy)."""


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of :func:`calibrate_tau0`.

    Attributes:
        tau0: the chosen τ0 (nats).
        achieved_share: teacher share of the rollouts at ``tau0`` (token-weighted over all prompts).
        target_share: the requested share.
        history: ``(tau0, share)`` of every evaluation, in order.
    """

    tau0: float
    achieved_share: float
    target_share: float
    history: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "tau0": self.tau0,
            "achieved_share": self.achieved_share,
            "target_share": self.target_share,
            "history": [{"tau0": tau0, "share": share} for tau0, share in self.history],
        }


def teacher_share(
    student: nn.Module,
    teacher: nn.Module,
    prompt_batches: Sequence[tuple[Tensor, Tensor]],
    settings: RolloutSettings,
    *,
    seed: int = 0,
) -> float:
    """Teacher share of rollouts over several prompt batches, token-weighted.

    Batch i is decoded with a generator seeded ``seed + i`` on the student's device.

    Args:
        student: the student causal LM.
        teacher: the teacher causal LM.
        prompt_batches: ``(prompt_ids [B, Lp], prompt_mask [B, Lp])`` pairs, left-padded.
        settings: rollout settings.
        seed: base seed.

    Returns:
        Teacher tokens / generated tokens over all batches (NaN when nothing was generated).
    """
    device = model_device(student)
    teacher_tokens, tokens = 0, 0
    for index, (prompt_ids, prompt_mask) in enumerate(prompt_batches):
        generator = torch.Generator(device=device).manual_seed(seed + index)
        batch = rollout(student, teacher, prompt_ids, prompt_mask, settings, generator=generator)
        teacher_tokens += int((batch.teacher_chosen & batch.response_mask).sum())
        tokens += int(batch.response_mask.sum())
    return teacher_tokens / tokens if tokens else math.nan


def _never_intervenes_above(settings: RolloutSettings) -> float:
    """The τ0 above which τ_t >= ln 2 at every step, so the teacher never intervenes (inf if there is none)."""
    ratios = threshold(
        settings.schedule, torch.arange(settings.max_new_tokens), tau0=1.0, decay=settings.decay,
        horizon=settings.schedule_horizon,
    ).to(torch.float64)
    smallest = float(ratios.min())
    return JSD_MAX / smallest if smallest > 0 else math.inf


def calibrate_tau0(
    student: nn.Module,
    teacher: nn.Module,
    prompt_batches: Sequence[tuple[Tensor, Tensor]],
    settings: RolloutSettings,
    *,
    target_share: float = 0.53,
    tolerance: float = 0.02,
    max_evaluations: int = 12,
    seed: int = 0,
    progress: Callable[[float, float], None] | None = None,
) -> CalibrationResult:
    """Find τ0 for which SWITCH rollouts reach ``target_share`` teacher tokens (search in the module docstring).

    Args:
        student: the student causal LM (e.g. the SFT-initialised student, method.md §1.2).
        teacher: the teacher causal LM.
        prompt_batches: ``(prompt_ids, prompt_mask)`` left-padded batches; more prompts and tokens give a steadier
            share at a higher cost (each evaluation decodes all of them).
        settings: rollout settings with ``strategy="switch"``; its ``tau0`` is ignored; ``keep_teacher_logits`` is
            turned off during the search.
        target_share: wanted teacher share in (0, 1) (the paper's 53%).
        tolerance: stop when ``|share − target| <= tolerance``.
        max_evaluations: rollout passes allowed, >= 1.
        seed: base seed of every evaluation (the same for each candidate τ0).
        progress: called with ``(tau0, share)`` after each evaluation.

    Returns:
        A :class:`CalibrationResult`.

    Raises:
        CalibrationError: target or tolerance out of range, ``max_evaluations < 1``, no prompt batches, or a strategy
            other than ``switch``.
    """
    if not 0.0 < target_share < 1.0:
        raise CalibrationError(f"target_share={target_share} must be in (0, 1)")
    if not 0.0 <= tolerance < 1.0:
        raise CalibrationError(f"tolerance={tolerance} must be in [0, 1)")
    if max_evaluations < 1:
        raise CalibrationError(f"max_evaluations={max_evaluations} must be >= 1")
    if not prompt_batches:
        raise CalibrationError("no prompt batches: calibration needs prompts to decode")
    if settings.strategy != "switch":
        raise CalibrationError(f"τ0 only matters for strategy='switch', got strategy={settings.strategy!r}")
    base = dataclasses.replace(settings, keep_teacher_logits=False)
    history: list[tuple[float, float]] = []

    def evaluate(tau0: float) -> float:
        share = teacher_share(student, teacher, prompt_batches, dataclasses.replace(base, tau0=tau0), seed=seed)
        history.append((tau0, share))
        if progress is not None:
            progress(tau0, share)
        return share

    def close_enough() -> bool:
        return any(abs(share - target_share) <= tolerance for _, share in history)

    cap = _never_intervenes_above(base)
    low, high = 0.0, JSD_MAX
    share_high = evaluate(high)
    while share_high > target_share and not close_enough() and high < cap and len(history) < max_evaluations:
        low, high = high, min(2.0 * high, cap)
        share_high = evaluate(high)
    while not close_enough() and len(history) < max_evaluations:
        middle = math.sqrt(low * high) if low > 0 else 0.5 * high
        if middle in (low, high):
            break
        if evaluate(middle) > target_share:
            low = middle
        else:
            high = middle
    tau0, share = min(history, key=lambda item: abs(item[1] - target_share))
    return CalibrationResult(tau0=tau0, achieved_share=share, target_share=target_share, history=tuple(history))
