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

Two peer strategies decide token by token too:

- ``skd`` (speculative knowledge distillation; Xu et al., ICLR 2025, "Speculative Knowledge Distillation: Bridging
  the Teacher-Student Gap Through Interleaved Sampling", and its public code ``google-research/speculative_kd``): the
  student proposes a token; the teacher keeps it when it is among the teacher's top-K tokens at that position, else
  the teacher draws the token itself (:func:`skd_rejects`; the source is decided with the token, in
  :func:`switch_core.rollout.sampling.select_tokens`).
- ``adaswitch`` (AdaSwitch; Peng et al., arXiv 2510.07842, "AdaSwitch: Adaptive Switching Generation for Knowledge
  Distillation"): the student writes until the gate's JSD at a position exceeds K times its mean over the preceding
  window (the paper's τ = K·d̄_{i−1}); from that position on the teacher writes the rest of the row
  (:func:`adaswitch_decide`). The decision depends on the row's earlier divergences, which both engines read from
  the positions already kept (never from discarded drafts). The divergence is the gate's JSD (β = 0.5, after the
  temperature), where AdaSwitch's default is the KL: the same bounded statistic as SWITCH's gate, so the two
  strategies differ only in their threshold (the paper reports its results robust to the distance metric).
  ``rollout.adaswitch_window`` (10) and ``rollout.adaswitch_k`` (2.0) are this project's choices: the public
  descriptions give the form τ = K·d̄ but not the values.
"""
from __future__ import annotations

import torch
from torch import Tensor

from switch_core.divergences import jensen_shannon

GATE_BETA = 0.5
"""β of the JSD in SWITCH's intervention test: the symmetric JSD (docs/METHOD.md §1.1)."""


def gate_divergence(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The gate's disagreement measure: the symmetric JSD of the tempered next-token distributions (module docstring).

    Args:
        p_logits: ``[..., V]`` teacher next-token logits (any float dtype).
        q_logits: ``[..., V]`` student next-token logits, same shape.
        temperature: > 0, divides both logits before the softmax.

    Returns:
        ``[...]`` JSD in nats, in [0, ln 2]; float32 (float64 if a logits tensor is float64).

    Raises:
        switch_core.divergences.DivergenceError: shapes differ, non-float logits or a bad temperature.
    """
    return jensen_shannon(q_logits, p_logits, temperature=temperature, beta=GATE_BETA)


def teacher_intervenes(divergence: Tensor, tau: Tensor | float) -> Tensor:
    """SWITCH's rule: the teacher writes where ``JSD_t > τ_t`` (strictly; ``JSD_t = τ_t`` keeps the student).

    Args:
        divergence: ``[...]`` :func:`gate_divergence` of the positions.
        tau: τ_t in nats, a float or a tensor broadcastable to ``[...]``.

    Returns:
        ``[...]`` bool, True where the teacher writes.
    """
    return divergence > tau


def switch_gate(p_logits: Tensor, q_logits: Tensor, tau: Tensor | float, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """SWITCH's intervention test in one call: :func:`teacher_intervenes` on :func:`gate_divergence`.

    Returns:
        ``(use_teacher [...] bool, jsd [...])`` (shapes, dtypes and errors as :func:`gate_divergence`).
    """
    jsd = gate_divergence(p_logits, q_logits, temperature)
    return teacher_intervenes(jsd, tau), jsd


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

    ``skd`` returns False everywhere: its source is decided with the student's token
    (:func:`switch_core.rollout.sampling.select_tokens`). ``adaswitch`` needs the row's history: use
    :func:`adaswitch_decide`.

    Args:
        strategy: ``switch | student | teacher | random | mixture | skd``.
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
        ValueError: an unknown strategy, ``adaswitch``, or ``switch`` without a divergence.
    """
    if strategy == "switch":
        if divergence is None:
            raise ValueError("the switch strategy needs the divergence of every position")
        return teacher_intervenes(divergence, tau)
    if strategy in ("student", "teacher"):
        return torch.full(component_draw.shape, strategy == "teacher", dtype=torch.bool, device=component_draw.device)
    if strategy == "random":
        return component_draw < random_rate
    if strategy == "adaswitch":
        raise ValueError("the adaswitch strategy decides from the row's earlier divergences: use adaswitch_decide")
    if strategy == "skd":
        return torch.zeros(component_draw.shape, dtype=torch.bool, device=component_draw.device)
    if strategy == "mixture":
        if greedy:
            return torch.zeros(component_draw.shape, dtype=torch.bool, device=component_draw.device)
        return component_draw < mixture_alpha
    raise ValueError(
        f"unknown rollout strategy {strategy!r}: use switch, student, teacher, random, mixture, skd or adaswitch"
    )


def skd_rejects(p_logits: Tensor, tokens: Tensor, top_k: int) -> Tensor:
    """SKD's test: where the student's proposed token is *not* among the teacher's top-K tokens.

    A token is among the top K when fewer than K tokens have a strictly larger teacher logit (ties at the K-th
    logit count as inside; the ranking is that of the raw logits, which temperature does not change, and ignores
    the sampling's own top-k / top-p filters).

    Args:
        p_logits: ``[n, V]`` teacher logits (any float dtype).
        tokens: ``[n]`` long, the student's proposals.
        top_k: K >= 1 (``rollout.skd_top_k``; 25 in SKD's configuration).

    Returns:
        ``[n]`` bool, True where the teacher replaces the token.
    """
    proposed = p_logits.gather(-1, tokens[:, None])
    return (p_logits > proposed).sum(dim=-1) >= top_k


def adaswitch_decide(
    history: Tensor, history_valid: Tensor, divergence: Tensor, switched: Tensor, window: int, k: float
) -> Tensor:
    """AdaSwitch's source of c consecutive positions of each row (module docstring).

    Position i *triggers* when at least one position precedes it and ``d_i > K · d̄_{i−1}``, with ``d̄_{i−1}`` the
    mean of the divergences of the (up to) ``window`` positions before i: the first position of a row never
    triggers, and the positions 1 .. window−1 average over all the positions they have (no initial value is
    assumed). The teacher writes position i when the row switched before the block or some position of the block
    up to i triggered (one switch per row; the teacher then writes to the end). The window sum is taken oldest
    first, one addition per window slot, so a position's decision has the same floats however the positions are
    grouped into blocks.

    Args:
        history: ``[n, window]`` the divergences of the ``window`` positions before the block, oldest first.
        history_valid: ``[n, window]`` bool, False for slots before the row's first response position.
        divergence: ``[n, c]`` the divergences (the gate's JSD) of the block's positions.
        switched: ``[n]`` bool, the row switched before the block.
        window: the averaging window W >= 1 (``rollout.adaswitch_window``).
        k: the multiplier K > 0 (``rollout.adaswitch_k``).

    Returns:
        ``[n, c]`` bool, True where the teacher writes.
    """
    values = torch.cat([history.to(divergence.dtype), divergence], dim=1)
    valid = torch.cat([history_valid, torch.ones_like(divergence, dtype=torch.bool)], dim=1)
    triggers = []
    for j in range(divergence.shape[1]):
        total = torch.zeros_like(divergence[:, 0])
        count = torch.zeros_like(divergence[:, 0])
        for slot in range(j, j + window):
            total = total + torch.where(valid[:, slot], values[:, slot], 0.0)
            count = count + valid[:, slot].to(count.dtype)
        mean = total / count.clamp_min(1)
        triggers.append((count > 0) & (divergence[:, j] > k * mean))
    return switched[:, None] | torch.stack(triggers, dim=1).cummax(dim=1).values

