"""The per-token training loss of every method, as a pure function of logits (testable without a trainer).

For a response token with student logits ``s``, teacher logits ``t`` and target token ``y`` (method.md §6):

    L = CE(s, y)                                            loss = "ce" (SFT §6.1; SeqKD as plain CE)
    L = (1 − kd_ratio) · CE(s, y) + kd_ratio · D(p ‖ q)     otherwise (DistiLLM ``finetune.py``: kd_ratio mixes them)

with ``D`` one of :data:`switch_core.divergences.DIVERGENCES`: fkl (KD §6.2, SeqKD §6.3, ImitKD §6.4), jsd with β
(GKD §6.6, β = 0.1), skl / srkl with α (DistiLLM §6.7, α = 0.1), rkl, tvd. All in nats, float32 or wider.
Reductions over positions are not done here: the loop sums per-token values and divides by the response tokens of
the *global* batch (:mod:`switch_core.training.objective`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from switch_core.config import MethodConfig
from switch_core.divergences import Divergence, get_divergence


@dataclass(frozen=True)
class LossSpec:
    """Which per-token loss to compute.

    Attributes:
        name: ``"ce"`` or a divergence name (``fkl``, ``rkl``, ``jsd``, ``skl``, ``srkl``, ``tvd``).
        kd_ratio: weight of the divergence, in [0, 1]; the rest goes to CE. Unused for ``"ce"``.
        alpha: skew α of skl / srkl.
        beta: generalised-JSD β of jsd.
    """

    name: str
    kd_ratio: float = 1.0
    alpha: float = 0.1
    beta: float = 0.1

    @classmethod
    def from_method(cls, method: MethodConfig) -> LossSpec:
        """The loss of a method configuration (``loss``, ``kd_ratio``, ``alpha``, ``beta``)."""
        return cls(name=method.loss, kd_ratio=method.kd_ratio, alpha=method.alpha, beta=method.beta)

    @property
    def needs_teacher(self) -> bool:
        """Whether the loss uses teacher logits (a divergence with a positive weight)."""
        return self.name != "ce" and self.kd_ratio > 0

    @property
    def needs_ce(self) -> bool:
        """Whether the loss has a cross-entropy term."""
        return self.name == "ce" or self.kd_ratio < 1

    def divergence(self) -> Divergence:
        """``(student_logits, teacher_logits) -> [...]`` with α / β bound (temperature 1, as all baselines).

        Raises:
            switch_core.divergences.DivergenceError: ``name`` is not a divergence.
        """
        params = {"jsd": {"beta": self.beta}, "skl": {"alpha": self.alpha}, "srkl": {"alpha": self.alpha}}
        return get_divergence(self.name, **params.get(self.name, {}))


def token_losses(
    spec: LossSpec, student_logits: Tensor, targets: Tensor, teacher_logits: Tensor | None = None
) -> Tensor:
    """Per-token loss of ``spec`` at ``N`` response positions.

    Args:
        spec: the loss.
        student_logits: ``[N, V]`` student logits (any float dtype; upcast to float32); gradients flow to it.
        targets: ``[N]`` long, the token each position is trained to predict (no ``-100`` here: select first).
        teacher_logits: ``[N, V]`` teacher logits at the same positions; required when ``spec.needs_teacher``.

    Returns:
        ``[N]`` float32 (float64 when the logits are float64) per-token losses in nats.

    Raises:
        ValueError: teacher logits missing when needed, or shapes that do not match.
    """
    if student_logits.dim() != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"student_logits must be [N, V] and targets [N]; got {tuple(student_logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    total = None
    if spec.needs_ce:
        wide = student_logits.dtype if student_logits.dtype == torch.float64 else torch.float32
        ce = F.cross_entropy(student_logits.to(wide), targets, reduction="none")
        if spec.name == "ce":
            return ce
        total = (1.0 - spec.kd_ratio) * ce
    if spec.needs_teacher:
        if teacher_logits is None:
            raise ValueError(f"loss {spec.name!r} with kd_ratio={spec.kd_ratio} needs teacher logits")
        divergence = spec.kd_ratio * spec.divergence()(student_logits, teacher_logits)
        total = divergence if total is None else total + divergence
    return total
