"""The SWITCH gate and every rollout strategy's choice of token source (teacher or student) at one position.

SWITCH (Koo et al., Findings of NAACL 2025, "SWITCH: Studying with Teacher for Knowledge Distillation of Large
Language Models"; docs/METHOD.md §1.1) lets the teacher write response token t when the teacher's and the student's
next-token distributions disagree by more than a threshold that falls along the response:

    p_t = softmax(p_logits / T)      (teacher)      q_t = softmax(q_logits / T)      (student)
    m_t = ½ (p_t + q_t)
    JSD_t = ½ KL(p_t ‖ m_t) + ½ KL(q_t ‖ m_t)        in nats, 0 <= JSD_t <= ln 2
    τ_t = τ0 · exp(−λ t)                              (t = 0 for the first response token; other schedules in
                                                       :mod:`switch_core.rollout.schedules`)
    the teacher writes token t  ⟺  JSD_t > τ_t        (strictly greater: JSD_t = τ_t keeps the student)

The other strategies (docs/METHOD.md §2, §6) decide without the divergence: ``student`` never takes the teacher,
``teacher`` always does, ``random`` takes it with probability ``random_rate`` and ``mixture`` picks MiniLLM's mixture
component, the teacher with probability α. Those two draw with the position's keyed uniform
(:func:`switch_core.rollout.sampling.keyed_uniforms`), so a decision depends on the position's inputs alone and both
rollout engines (lockstep and speculative) take the same decisions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from switch_core.divergences import jensen_shannon

GATE_BETA = 0.5
"""β of the JSD in SWITCH's intervention test: the symmetric JSD (docs/METHOD.md §1.1)."""


def switch_gate(p_logits: Tensor, q_logits: Tensor, tau: Tensor | float, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """SWITCH's intervention test: the teacher writes the token where ``JSD(p, q) > τ`` (module docstring).

    Args:
        p_logits: ``[..., V]`` teacher next-token logits (any float dtype).
        q_logits: ``[..., V]`` student next-token logits, same shape.
        tau: τ_t in nats, a float or a tensor broadcastable to ``[...]``.
        temperature: > 0, divides both logits before the softmax.

    Returns:
        ``(use_teacher [...] bool, jsd [...])``; ``jsd`` is float32 (float64 if a logits tensor is float64).

    Raises:
        switch_core.divergences.DivergenceError: shapes differ, non-float logits or a bad temperature.
    """
    jsd = jensen_shannon(q_logits, p_logits, temperature=temperature, beta=GATE_BETA)
    return jsd > tau, jsd


def decide(
    strategy: str,
    *,
    divergence: Tensor | None,
    tau: Tensor | float,
    component_draw: Tensor,
    random_rate: float,
    mixture_alpha: float,
    greedy: bool,
) -> Tensor:
    """Which positions take the teacher's token under ``strategy`` (for ``mixture``: the drawn component).

    Args:
        strategy: ``switch | student | teacher | random | mixture``.
        divergence: ``[...]`` the gate's JSD (required for ``switch``, ignored otherwise).
        tau: τ_t broadcastable to ``component_draw`` (``switch`` only).
        component_draw: ``[...]`` the positions' keyed uniforms in [0, 1) for the component (its shape is the
            result's).
        random_rate: teacher probability of ``random``.
        mixture_alpha: teacher weight α of ``mixture``.
        greedy: greedy ``mixture`` takes the argmax of the mixture; its source is decided with the token
            (:func:`switch_core.rollout.sampling.select_tokens`), so this returns False there.

    Returns:
        ``[...]`` bool on ``component_draw``'s device.

    Raises:
        ValueError: an unknown strategy, or ``switch`` without a divergence.
    """
    if strategy == "switch":
        if divergence is None:
            raise ValueError("the switch strategy needs the divergence of every position")
        return divergence > tau
    if strategy in ("student", "teacher"):
        return torch.full(component_draw.shape, strategy == "teacher", dtype=torch.bool, device=component_draw.device)
    if strategy == "random":
        return component_draw < random_rate
    if strategy == "mixture":
        if greedy:
            return torch.zeros(component_draw.shape, dtype=torch.bool, device=component_draw.device)
        return component_draw < mixture_alpha
    raise ValueError(f"unknown rollout strategy {strategy!r}: use switch, student, teacher, random or mixture")
