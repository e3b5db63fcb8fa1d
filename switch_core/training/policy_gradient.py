"""MiniLLM's policy gradient on the sequence-level reverse KL, as pure functions of per-token values (METHOD.md §6.5).

MiniLLM minimises ``KL(q_θ ‖ p) = E_{y∼q_θ}[log q_θ(y|x) − log p(y|x)]`` over student rollouts with PPO-style
clipping (MiniLLM code: ``minillm/sampler.py`` computes the stored values, ``minillm/losses.py`` the loss). For
response token ``t`` (0-based) of a rollout ``y`` of length ``|y|`` drawn from the sampling distribution ``p̃``
(``α·p + (1−α)·q_old`` for teacher-mixed sampling, ``q_old`` for pure student sampling):

==================  ===================================================================================  ==========
value               formula                                                                              function
==================  ===================================================================================  ==========
reward              ``r_t = clip((log p(y_t) − log q_old(y_t)) / reward_scaling, −c, +c)``               :func:`token_rewards`
return              ``R_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} / (|y| − t)`` (divided by the remaining length)   :func:`normalised_returns`
advantage           ``A_t = (R_t − mean R) / sqrt(var R + 1e−8)`` over the response tokens of the batch  :func:`whiten`
importance weight   ``w_t = q_old(y_t) / p̃(y_t)``                                                         :func:`importance_weights`
PPO loss            ``ρ_t = w_t·exp(log q_θ(y_t) − log q_old(y_t))``,                                    :func:`clipped_policy_loss`
                    ``L_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))``
==================  ===================================================================================  ==========

``q_old`` is the student when the rollout was drawn (the values are fixed then and reused for ``ppo_epochs``
optimizer steps); ``q_θ`` is the student being trained. As in MiniLLM's ``_pg_loss``, the importance weight
multiplies the ratio *before* clipping. The single-step term ``KL(q_θ ‖ p)`` over the vocabulary is added per token
by :mod:`switch_core.training.losses`; the token mean over the global batch is the loop's.

The whitening statistics are the batch's: mean and population variance over all response tokens of the step's
global batch (``reduce_sum`` sums them over processes, as MiniLLM's ``get_global_statistics``), so the advantages do
not depend on the process count. All values are natural-log based.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from switch_core.training.batches import PolicyTokens

WHITEN_EPS = 1e-8
"""MiniLLM ``utils.whiten``: ``(x − mean) · rsqrt(var + 1e−8)``."""

ReduceSum = Callable[[Tensor], Tensor]
"""Sums a tensor over processes (e.g. ``lambda t: accelerator.reduce(t, reduction="sum")``)."""


class PolicyGradientError(ValueError):
    """Per-token inputs that cannot give policy-gradient values (shapes, or log-probabilities the rollout lacks)."""


def _check(mask: Tensor, **values: Tensor) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise PolicyGradientError(f"mask must be a [B, T] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    for name, tensor in values.items():
        if tensor.shape != mask.shape:
            raise PolicyGradientError(f"{name} must have the mask's shape {tuple(mask.shape)}, got {tuple(tensor.shape)}")
        if not torch.isfinite(tensor[mask]).all():
            raise PolicyGradientError(
                f"{name} is not finite on some response tokens (NaN: the rollout did not run that model; roll out "
                "with both the student and the teacher, e.g. RolloutSettings(compute_divergence=True))"
            )


def token_rewards(
    teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, *, reward_scaling: float, reward_clip: float
) -> Tensor:
    """MiniLLM's per-token reward ``clip((log p(y_t) − log q_old(y_t)) / reward_scaling, −reward_clip, reward_clip)``.

    The teacher part is MiniLLM's ``reward.py`` value (``selection_value − logsumexp`` of mean-centred teacher logits
    = ``log p(y_t)``), the student part its entropy reward ``−log q_old(y_t)`` (``sampler.py``); both are the
    temperature-1 log-probabilities of the drawn token.

    Args:
        teacher_logprobs: ``[B, T]`` float, ``log p(y_t)``.
        student_logprobs: ``[B, T]`` float, ``log q_old(y_t)``.
        mask: ``[B, T]`` bool, True on response tokens.
        reward_scaling: divisor, > 0 (MiniLLM ``--reward-scaling`` 0.5).
        reward_clip: clipping bound, > 0 (MiniLLM ``--cliprange-reward``).

    Returns:
        ``[B, T]`` rewards in the inputs' dtype (nats / ``reward_scaling``), 0 off the mask.

    Raises:
        PolicyGradientError: shapes, non-finite log-probabilities on response tokens, or a non-positive scale/bound.
    """
    _check(mask, teacher_logprobs=teacher_logprobs, student_logprobs=student_logprobs)
    if not (reward_scaling > 0 and reward_clip > 0):
        raise PolicyGradientError(f"reward_scaling ({reward_scaling}) and reward_clip ({reward_clip}) must be > 0")
    rewards = ((teacher_logprobs - student_logprobs) / reward_scaling).clamp(-reward_clip, reward_clip)
    return torch.where(mask, rewards, 0.0)


def normalised_returns(rewards: Tensor, mask: Tensor, *, gamma: float) -> Tensor:
    """Discounted reward-to-go divided by the remaining length: ``R_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} / n_t``.

    ``n_t`` is the number of response tokens from ``t`` to the end of the row (``|y| − t`` for a response that fills
    the first ``|y|`` columns), MiniLLM ``losses.py::_get_advantages_and_returns`` (its length division is
    unconditional, docs/METHOD.md §6.5).

    Args:
        rewards: ``[B, T]`` float per-token rewards (values off the mask are ignored).
        mask: ``[B, T]`` bool, True on response tokens.
        gamma: discount γ in [0, 1] (MiniLLM default 0.95).

    Returns:
        ``[B, T]`` in the rewards' dtype, 0 off the mask.

    Raises:
        PolicyGradientError: shapes, non-finite rewards, or γ outside [0, 1].
    """
    _check(mask, rewards=rewards)
    if not 0.0 <= gamma <= 1.0:
        raise PolicyGradientError(f"gamma must be in [0, 1], got {gamma}")
    rewards = torch.where(mask, rewards, 0.0)
    running = torch.zeros_like(rewards[:, 0])
    returns = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    remaining = mask.flip(-1).to(rewards.dtype).cumsum(-1).flip(-1)
    return torch.where(mask, returns / remaining.clamp_min(1.0), 0.0)


def whiten(values: Tensor, mask: Tensor, *, reduce_sum: ReduceSum | None = None) -> Tensor:
    """``(x − mean) / sqrt(var + 1e−8)`` with the mean and population variance of ``values`` on the mask.

    Statistics are taken in float64 over every masked entry of every process (``reduce_sum``), two-pass (mean, then
    the sum of squared deviations), as MiniLLM's ``get_global_statistics``.

    Args:
        values: ``[B, T]`` float.
        mask: ``[B, T]`` bool; at least one True entry over all processes.
        reduce_sum: sums a float64 tensor over processes; None = this process only.

    Returns:
        ``[B, T]`` in the values' dtype, 0 off the mask.

    Raises:
        PolicyGradientError: shapes, non-finite values, or no masked entry at all.
    """
    _check(mask, values=values)
    reduce_sum = reduce_sum or (lambda tensor: tensor)
    wide = torch.where(mask, values.double(), 0.0)
    count_sum = reduce_sum(torch.stack([mask.sum().double(), wide.sum()]))
    if float(count_sum[0]) == 0:
        raise PolicyGradientError("whiten needs at least one response token")
    mean = count_sum[1] / count_sum[0]
    variance = reduce_sum(torch.where(mask, wide - mean, 0.0).square().sum()) / count_sum[0]
    whitened = (wide - mean) * torch.rsqrt(variance + WHITEN_EPS)
    return torch.where(mask, whitened, 0.0).to(values.dtype)


def importance_weights(student_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``w_t = q_old(y_t) / p̃(y_t) = exp(log q_old(y_t) − log p̃(y_t))`` (MiniLLM teacher-mixed sampling, §6.5).

    With pure student sampling at temperature 1 (or teacher-mixed sampling with α = 0) the rollout engine reports
    ``log p̃ = log q_old`` bit for bit, so every weight is exactly 1.

    Args:
        student_logprobs: ``[B, T]`` float, ``log q_old(y_t)``.
        sampling_logprobs: ``[B, T]`` float, log-probability of ``y_t`` under the distribution it was drawn from
            (:attr:`switch_core.rollout.RolloutBatch.sampling_logprobs`).
        mask: ``[B, T]`` bool.

    Returns:
        ``[B, T]`` weights >= 0 in the inputs' dtype, 0 off the mask.

    Raises:
        PolicyGradientError: shapes or non-finite log-probabilities on response tokens.
    """
    _check(mask, student_logprobs=student_logprobs, sampling_logprobs=sampling_logprobs)
    return torch.where(mask, (student_logprobs - sampling_logprobs).exp(), 0.0)


def rollout_policy_tokens(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    sampling_logprobs: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    reward_scaling: float,
    reward_clip: float,
    reduce_sum: ReduceSum | None = None,
) -> tuple[PolicyTokens, Tensor]:
    """Everything a rollout batch stores for MiniLLM's PPO epochs (module docstring table).

    Args:
        student_logprobs: ``[B, T]`` ``log q_old(y_t)`` (temperature 1).
        teacher_logprobs: ``[B, T]`` ``log p(y_t)`` (temperature 1).
        sampling_logprobs: ``[B, T]`` log-probability under the sampling distribution.
        mask: ``[B, T]`` bool, True on response tokens (the stop token included).
        gamma: discount γ.
        reward_scaling: reward divisor.
        reward_clip: reward clipping bound.
        reduce_sum: sums over processes for the whitening statistics (None = one process).

    Returns:
        ``(values, returns)``: :class:`PolicyTokens` with ``[B, T]`` float32 fields, and the ``[B, T]`` float32
        length-normalised returns before whitening (for logging).

    Raises:
        PolicyGradientError: see the functions used.
    """
    wide = {"student": student_logprobs.double(), "teacher": teacher_logprobs.double()}
    rewards = token_rewards(
        wide["teacher"], wide["student"], mask, reward_scaling=reward_scaling, reward_clip=reward_clip
    )
    returns = normalised_returns(rewards, mask, gamma=gamma)
    advantages = whiten(returns, mask, reduce_sum=reduce_sum)
    weights = importance_weights(student_logprobs.float(), sampling_logprobs.float(), mask)
    values = PolicyTokens(
        old_logprobs=torch.where(mask, student_logprobs.float(), 0.0),
        teacher_logprobs=torch.where(mask, teacher_logprobs.float(), 0.0),
        rewards=rewards.float(), advantages=advantages.float(), weights=weights,
    )
    return values, returns.float()


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, weights: Tensor, *, clip: float
) -> tuple[Tensor, Tensor]:
    """Per-token PPO loss with the importance weight inside the clipped ratio (MiniLLM ``losses.py::_pg_loss``).

    ``ρ = w·exp(log q_θ − log q_old)``; ``L = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))``. Gradients flow through
    ``logprobs`` only.

    Args:
        logprobs: ``[N]`` float, ``log q_θ(y_t)`` of the student being trained.
        old_logprobs: ``[N]`` ``log q_old(y_t)`` from the rollout.
        advantages: ``[N]`` advantages ``A_t``.
        weights: ``[N]`` importance weights ``w_t``.
        clip: ε in (0, 1) (MiniLLM ``--cliprange`` 0.2).

    Returns:
        ``(loss, clipped)``: ``[N]`` per-token loss in the dtype of ``logprobs`` (float32 at least), and ``[N]`` bool,
        True where the clipped term is the larger one (its gradient is zero; the clip fraction's numerator).

    Raises:
        PolicyGradientError: shapes differ or ε is outside (0, 1).
    """
    shapes = {tuple(t.shape) for t in (logprobs, old_logprobs, advantages, weights)}
    if len(shapes) != 1 or logprobs.dim() != 1:
        raise PolicyGradientError(f"policy-loss inputs must share one [N] shape, got {sorted(shapes)}")
    if not 0.0 < clip < 1.0:
        raise PolicyGradientError(f"clip must be in (0, 1), got {clip}")
    wide = logprobs.dtype if logprobs.dtype == torch.float64 else torch.float32
    ratio = (logprobs.to(wide) - old_logprobs.to(wide)).exp() * weights.to(wide)
    advantages = advantages.to(wide)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped
