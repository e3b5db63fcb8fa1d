"""Calibrate SWITCH's τ0 to a target teacher share.

The paper does not give τ0 (METHOD.md §1.2); it reports that with its decay factor about 53% of the generated tokens
come from the teacher (docs/METHOD.md §1.1 item 4). This module searches τ0 so that SWITCH rollouts of the given student
and teacher on given prompts reach a target teacher share.

The share depends on the tokens actually chosen (a teacher token changes the prefix of every later step), so each
candidate τ0 is evaluated with real rollouts; the same seeds are used for every candidate (common random numbers),
which makes the share close to non-increasing in τ0. The search stays inside (0, ln 2], the range in which the gate
can act from the first response token (the JSD never exceeds ln 2, docs/METHOD.md §1.4): it evaluates τ0 = ln 2
(the fewest teacher tokens the range allows) and, when that share is still above the target, reports the target as
out of reach (``bounded``) and keeps ln 2; otherwise it bisects (0, ln 2] (geometric midpoint once the lower end is
> 0, since the useful τ0 may span orders of magnitude under an exponential schedule). The evaluated τ0 with the share
closest to the target is returned. A τ0 above ln 2 is never chosen here; given by hand (``rollout.tau0``) it stays
allowed and the run names it a position switch (:func:`switch_core.rollout.schedules.gate_summary`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from switch_core.config import RolloutConfig
from switch_core.data.tokenize import left_pad
from switch_core.models.device import model_device
from switch_core.rollout.engine import rollout
from switch_core.rollout.schedules import JSD_MAX
from switch_core.rollout.settings import RolloutSettings

_SCHEMA = RolloutConfig()  # defaults of the search's arguments
_ARGUMENT_FIELDS = {
    "target_share": "target_teacher_share", "tolerance": "calibration_tolerance",
    "max_evaluations": "calibration_evaluations",
}
"""calibrate_tau0 argument -> the `switch_core.config.RolloutConfig` field that declares and validates it."""


class CalibrationError(ValueError):
    """Bad calibration arguments (target share, tolerance, budget, prompts or strategy)."""


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of :func:`calibrate_tau0`.

    Attributes:
        settings: the given settings with the chosen τ0 (nats): what the rollouts use from then on.
        achieved_share: teacher share of the rollouts at that τ0 (token-weighted over all prompts).
        target_share: the requested share.
        history: ``(tau0, share)`` of every evaluation, in order.
        bounded: True when even τ0 = ln 2, the top of the search range, gave more teacher tokens than the target
            (beyond the tolerance): τ0 stays ln 2 and ``achieved_share`` is that share (:attr:`reason` says so).
        tolerance: the requested ``|share − target|``; a result outside it has a :attr:`reason` too (bounded, or
            the evaluation budget ran out first).
    """

    settings: RolloutSettings
    achieved_share: float
    target_share: float
    history: tuple[tuple[float, float], ...]
    bounded: bool = False
    tolerance: float = _SCHEMA.calibration_tolerance

    @property
    def reason(self) -> str | None:
        """Why the share is not within the tolerance of the target (None when it is): out of reach inside
        (0, ln 2] (``bounded``), or the evaluation budget ran out before the search got there."""
        if self.bounded:
            return (f"target teacher share {self.target_share:.3f} is out of reach with tau0 in (0, ln 2]: tau0 = "
                    f"ln 2 already gives {self.achieved_share:.3f}; kept tau0 = ln 2 (a lower share needs a slower "
                    "decay, a smaller rollout.decay, or a student closer to the teacher, docs/METHOD.md §1.4)")
        if abs(self.achieved_share - self.target_share) <= self.tolerance:
            return None
        return (f"the tau0 search used its {len(self.history)} evaluations without reaching teacher share "
                f"{self.target_share:.3f} ± {self.tolerance:g}; kept the closest, tau0 = {self.tau0:.4g} (share "
                f"{self.achieved_share:.3f}); raise rollout.calibration_evaluations (--max-evaluations) to search on")

    @property
    def tau0(self) -> float:
        """The chosen τ0 (nats)."""
        return self.settings.tau0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``tau0``, ``achieved_share``, ``target_share``, ``history`` (``tau0``, ``share``),
        ``bounded`` and ``reason`` (None when the share is within the tolerance)."""
        return {
            "tau0": self.tau0,
            "achieved_share": self.achieved_share,
            "target_share": self.target_share,
            "history": [{"tau0": tau0, "share": share} for tau0, share in self.history],
            "bounded": self.bounded,
            "reason": self.reason,
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
        by_teacher, generated = batch.teacher_counts()
        teacher_tokens, tokens = teacher_tokens + int(by_teacher.sum()), tokens + int(generated.sum())
    return teacher_tokens / tokens if tokens else math.nan


def calibrate_tau0(
    student: nn.Module,
    teacher: nn.Module,
    prompt_batches: Sequence[tuple[Tensor, Tensor]],
    settings: RolloutSettings,
    *,
    target_share: float = _SCHEMA.target_teacher_share,
    tolerance: float = _SCHEMA.calibration_tolerance,
    max_evaluations: int = _SCHEMA.calibration_evaluations,
    seed: int = 0,
    progress: Callable[[float, float], None] | None = None,
) -> CalibrationResult:
    """Find τ0 in (0, ln 2] for which SWITCH rollouts reach ``target_share`` teacher tokens (search in the module
    docstring; a target above reach at ln 2 gives ``bounded``).

    Args:
        student: the student causal LM (e.g. the SFT-initialised student, docs/METHOD.md §1.2).
        teacher: the teacher causal LM.
        prompt_batches: ``(prompt_ids, prompt_mask)`` left-padded batches; more prompts and tokens give a steadier
            share at a higher cost (each evaluation decodes all of them).
        settings: rollout settings with ``strategy="switch"``; its ``tau0`` is ignored (None is fine);
            ``keep_teacher_logits`` is turned off during the search.
        target_share: wanted teacher share in (0, 1) (the paper's 53%; ``rollout.target_teacher_share``).
        tolerance: stop when ``|share − target| <= tolerance``, in [0, 1) (``rollout.calibration_tolerance``).
        max_evaluations: rollout passes allowed, >= 1 (``rollout.calibration_evaluations``).
        seed: base seed of every evaluation (the same for each candidate τ0).
        progress: called with ``(tau0, share)`` after each evaluation.

    Returns:
        A :class:`CalibrationResult` whose ``settings`` are ``settings`` with the chosen τ0 (0 < τ0 <= ln 2).

    Raises:
        CalibrationError: target or tolerance out of range, ``max_evaluations < 1``, no prompt batches, or a strategy
            other than ``switch``.
    """
    arguments = {"target_share": target_share, "tolerance": tolerance, "max_evaluations": max_evaluations}
    try:
        RolloutConfig.model_validate({_ARGUMENT_FIELDS[name]: value for name, value in arguments.items()})
    except ValidationError as error:
        argument = {field: name for name, field in _ARGUMENT_FIELDS.items()}
        problems = []
        for e in error.errors():
            field = e["loc"][0]
            problems.append(f"{argument[field]}={arguments[argument[field]]!r}: {e['msg']} (as rollout.{field})")
        raise CalibrationError("; ".join(problems)) from None
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

    low, high = 0.0, JSD_MAX
    bounded = evaluate(high) > target_share and not close_enough()
    while not bounded and not close_enough() and len(history) < max_evaluations:
        middle = math.sqrt(low * high) if low > 0 else 0.5 * high
        if middle in (low, high):
            break
        if evaluate(middle) > target_share:
            low = middle
        else:
            high = middle
    tau0, share = min(history, key=lambda item: abs(item[1] - target_share))
    return CalibrationResult(
        settings=dataclasses.replace(settings, tau0=tau0), achieved_share=share, target_share=target_share,
        history=tuple(history), bounded=bounded, tolerance=tolerance,
    )


def calibrate_settings(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: RolloutSettings,
    config: RolloutConfig,
    *,
    seed: int,
    progress: Callable[[float, float], None] | None = None,
) -> CalibrationResult:
    """τ0 of ``settings`` calibrated as the ``rollout`` config section says (a training run's calibration).

    The first ``config.calibration_prompts`` prompts, left-padded in batches of ``config.batch_size`` in their
    order, are decoded at each try; the search (:func:`calibrate_tau0`) aims at ``config.target_teacher_share``
    within ``config.calibration_tolerance`` in at most ``config.calibration_evaluations`` tries.

    Args:
        student: the student causal LM (at the run's starting checkpoint, docs/METHOD.md §1.2).
        teacher: the teacher causal LM.
        prompts: prompt token ids (e.g. the training prompts), unpadded.
        settings: the run's rollout settings (``strategy="switch"``; e.g. :meth:`RolloutSettings.from_config`).
        config: the validated ``rollout`` section.
        seed: base seed of every try.
        progress: called with ``(tau0, share)`` after each try.

    Returns:
        A :class:`CalibrationResult` whose ``settings`` are ``settings`` with the chosen τ0.

    Raises:
        CalibrationError: see :func:`calibrate_tau0` (e.g. no prompts).
    """
    chosen = list(prompts[: config.calibration_prompts])
    size = config.batch_size
    batches = [left_pad(chosen[i : i + size], settings.pad_token_id) for i in range(0, len(chosen), size)]
    return calibrate_tau0(
        student, teacher, batches, settings, target_share=config.target_teacher_share,
        tolerance=config.calibration_tolerance, max_evaluations=config.calibration_evaluations, seed=seed,
        progress=progress,
    )
