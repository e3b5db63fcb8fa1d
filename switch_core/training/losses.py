"""The per-token training loss of every method, as a pure function of logits (testable without a trainer).

For a response token with student logits ``s``, teacher logits ``t`` and target token ``y`` (docs/METHOD.md §6):

    L = CE(s, y)                                            loss = "ce" (SFT §6.1; SeqKD as plain CE)
    L = (1 − kd_ratio) · CE(s, y) + kd_ratio · D(p ‖ q)     otherwise (DistiLLM ``finetune.py``: kd_ratio mixes them)

with ``D`` one of :data:`switch_core.divergences.DIVERGENCES`: fkl (KD §6.2, SeqKD §6.3, ImitKD §6.4), jsd with β
(GKD §6.6, β = 0.1), skl / srkl with α (DistiLLM §6.7, α = 0.1), rkl, tvd. MiniLLM (§6.5, ``data:
policy_gradient``) on a rollout token carrying its :class:`~switch_core.training.batches.PolicyTokens`:

    L = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)) + KL(q ‖ p)     ρ = w·q_θ(y) / q_old(y); the KL term with single_step_reg

(:func:`switch_core.training.policy_gradient.clipped_policy_loss`); on a batch without them (the ground-truth dev
batches) MiniLLM's loss is its divergence, the reverse KL. All in nats, float32 or wider.
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
from switch_core.training.batches import PolicyTokens
from switch_core.training.policy_gradient import clipped_policy_loss


@dataclass(frozen=True)
class LossSpec:
    """Which per-token loss to compute.

    Attributes:
        name: ``"ce"`` or a divergence name (``fkl``, ``rkl``, ``jsd``, ``skl``, ``srkl``, ``tvd``).
        kd_ratio: weight of the divergence, in [0, 1]; the rest goes to CE. Unused for ``"ce"``.
        alpha: skew α of skl / srkl.
        beta: generalised-JSD β of jsd.
        policy_gradient: MiniLLM's clipped policy-gradient loss on tokens that carry policy values.
        ppo_clip: PPO ratio clipping ε (policy_gradient).
        single_step_reg: add the divergence (KL(q ‖ p) for MiniLLM) to the policy-gradient loss.
    """

    name: str
    kd_ratio: float = 1.0
    alpha: float = 0.1
    beta: float = 0.1
    policy_gradient: bool = False
    ppo_clip: float = 0.2
    single_step_reg: bool = True

    @classmethod
    def from_method(cls, method: MethodConfig) -> LossSpec:
        """The loss of a method configuration (``loss``, ``kd_ratio``, ``alpha``, ``beta``; for ``data:
        policy_gradient`` also ``ppo_clip`` and ``single_step_reg``)."""
        return cls(
            name=method.loss, kd_ratio=method.kd_ratio, alpha=method.alpha, beta=method.beta,
            policy_gradient=method.data == "policy_gradient", ppo_clip=method.ppo_clip,
            single_step_reg=method.single_step_reg,
        )

    @property
    def needs_teacher(self) -> bool:
        """Whether the loss uses teacher logits on a batch without policy values (a divergence with a positive
        weight)."""
        return self.name != "ce" and self.kd_ratio > 0

    def uses_teacher(self, with_policy: bool) -> bool:
        """Whether the loss of a batch needs teacher logits; ``with_policy``: the batch carries policy values (then
        only the single-step term uses them)."""
        if self.policy_gradient and with_policy:
            return self.single_step_reg
        return self.needs_teacher

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


def token_loss_terms(
    spec: LossSpec,
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None = None,
    policy: PolicyTokens | None = None,
) -> dict[str, Tensor]:
    """Per-token loss of ``spec`` at ``N`` response positions, with its named terms.

    Args:
        spec: the loss.
        student_logits: ``[N, V]`` student logits (any float dtype; upcast to float32); gradients flow to it.
        targets: ``[N]`` long, the token each position is trained to predict (no ``-100`` here: select first).
        teacher_logits: ``[N, V]`` teacher logits at the same positions; required when
            ``spec.uses_teacher(policy is not None)``.
        policy: ``[N]`` policy values of the positions (:meth:`TrainBatch.packed_policy`); used by
            ``spec.policy_gradient`` only.

    Returns:
        ``{"loss": [N]}`` float32 (float64 when the logits are float64) per-token losses in nats; for a
        policy-gradient loss on positions with policy values also ``"pg"`` (the clipped policy loss), ``"clipped"``
        (1.0 where the clipped term is active, else 0.0) and, with ``single_step_reg``, ``"reg"`` (KL(q ‖ p)).

    Raises:
        ValueError: teacher logits missing when needed, or shapes that do not match.
    """
    if student_logits.dim() != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"student_logits must be [N, V] and targets [N]; got {tuple(student_logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    wide = student_logits.dtype if student_logits.dtype == torch.float64 else torch.float32
    if spec.policy_gradient and policy is not None:
        logprobs = torch.log_softmax(student_logits.to(wide), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        pg, clipped = clipped_policy_loss(
            logprobs, policy.old_logprobs, policy.advantages, policy.weights, clip=spec.ppo_clip
        )
        terms = {"loss": pg, "pg": pg, "clipped": clipped.to(wide)}
        if spec.single_step_reg:
            reg = spec.divergence()(student_logits, _require_teacher(spec, teacher_logits))
            terms["reg"] = reg
            terms["loss"] = pg + reg
        return terms
    total = None
    if spec.needs_ce:
        ce = F.cross_entropy(student_logits.to(wide), targets, reduction="none")
        if spec.name == "ce":
            return {"loss": ce}
        total = (1.0 - spec.kd_ratio) * ce
    if spec.needs_teacher:
        divergence = spec.kd_ratio * spec.divergence()(student_logits, _require_teacher(spec, teacher_logits))
        total = divergence if total is None else total + divergence
    return {"loss": total}


def _require_teacher(spec: LossSpec, teacher_logits: Tensor | None) -> Tensor:
    if teacher_logits is None:
        raise ValueError(f"loss {spec.name!r} with kd_ratio={spec.kd_ratio} needs teacher logits")
    return teacher_logits
