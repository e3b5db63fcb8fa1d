"""Token selection of the rollout engines: keyed uniforms, warping, inverse-CDF sampling and log-probabilities.

Every random number of a rollout is drawn by position: :func:`keyed_uniforms` draws, once per rollout call, one
uniform per (row, response position, purpose) from the generator. The token at response position t of row b is then
a function of the teacher's and the student's logits at that position and of ``uniforms[b, t]`` alone, whatever order
or grouping the engine evaluates positions in: the lockstep engine (one position at a time) and the speculative one
(a drafted chunk at a time) emit the same tokens and sources for the same seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import TopKLogitsWarper, TopPLogitsWarper

from switch_core.rollout.gate import skd_rejects

if TYPE_CHECKING:
    from switch_core.rollout.engine import RolloutSettings

TOKEN_DRAW = 0
"""Purpose index of the uniform that draws the token (inverse-CDF sampling)."""
COMPONENT_DRAW = 1
"""Purpose index of the uniform that draws the source of ``random`` / the mixture component of ``mixture``."""
TEACHER_DRAW = 2
"""Purpose index of the uniform of the teacher's replacement draw of ``skd`` (independent of the student's
proposal, which uses :data:`TOKEN_DRAW`)."""
PURPOSES = 3


def keyed_uniforms(
    generator: torch.Generator | None, batch: int, steps: int, device: torch.device, *, needed: bool = True,
    teacher_draw: bool = False,
) -> Tensor:
    """The uniforms of a rollout: ``[batch, steps, PURPOSES]`` float64 in [0, 1), indexed (row, position, purpose).

    Drawn from ``generator`` (None = torch's global generator) at the start of the rollout, so a seed fixes every
    position's draws: first :data:`TOKEN_DRAW` and :data:`COMPONENT_DRAW` of every position in one call, then, with
    ``teacher_draw`` (the ``skd`` strategy), :data:`TEACHER_DRAW` in a second call; without it that purpose is 0 and
    the generator advances exactly as it did before the purpose existed (the other strategies' rollouts are
    unchanged). With ``needed=False`` (greedy decoding of a strategy that draws nothing) returns zeros and leaves
    the generator untouched.
    """
    shape = (batch, steps, PURPOSES)
    if not needed:
        return torch.zeros(shape, dtype=torch.float64, device=device)
    first = torch.rand((batch, steps, TEACHER_DRAW), generator=generator, dtype=torch.float64, device=device)
    if teacher_draw:
        rest = torch.rand((batch, steps, 1), generator=generator, dtype=torch.float64, device=device)
    else:
        rest = torch.zeros((batch, steps, 1), dtype=torch.float64, device=device)
    return torch.cat([first, rest], dim=-1)


def draw_purpose(strategy: str, model: str) -> int:
    """The purpose of the uniform with which ``model`` (``student | teacher``) draws a token it writes:
    :data:`TEACHER_DRAW` for the teacher of ``skd`` (its replacement draw), else :data:`TOKEN_DRAW`."""
    return TEACHER_DRAW if strategy == "skd" and model == "teacher" else TOKEN_DRAW


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 for float64 logits, float32 for every other dtype (half-precision logits are widened)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def warper(temperature: float, top_k: int, top_p: float) -> Callable[[Tensor], Tensor]:
    """Logits ``[..., V]`` -> temperature-scaled logits (:func:`compute_dtype`) with top-k / top-p filtered entries
    set to −inf (transformers' ``TopKLogitsWarper`` / ``TopPLogitsWarper``)."""
    top_k_warp = TopKLogitsWarper(top_k) if top_k > 0 else None
    top_p_warp = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def warp(logits: Tensor) -> Tensor:
        logits = logits.to(compute_dtype(logits))
        if temperature != 1.0:
            logits = logits / temperature
        if top_k_warp is not None or top_p_warp is not None:
            shape = logits.shape
            logits = logits.reshape(-1, shape[-1])
            if top_k_warp is not None:
                logits = top_k_warp(None, logits)
            if top_p_warp is not None:
                logits = top_p_warp(None, logits)
            logits = logits.reshape(shape)
        return logits

    return warp


def sample_inverse_cdf(log_probs: Tensor, uniform: Tensor) -> Tensor:
    """The token whose CDF step holds ``uniform``: ``log_probs [n, V], uniform [n] in [0, 1) -> [n]`` long.

    Token v is drawn when ``cdf[v−1] <= u·cdf[V−1] < cdf[v]`` (inverse-CDF sampling; the same distribution as
    ``torch.multinomial`` when u is uniform, at a fraction of its CPU cost for large vocabularies). Tokens of
    probability 0 (filtered by top-k / top-p) are never drawn: their CDF step is empty. When ``u·total`` rounds up
    to the total, the last token of positive probability is taken.
    """
    cdf = log_probs.exp().cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    u = uniform.to(cdf.dtype)[:, None] * total
    tokens = torch.searchsorted(cdf, u, right=True)
    last = torch.searchsorted(cdf, total, right=False)
    return torch.where(tokens < cdf.shape[-1], tokens, last).squeeze(-1)


def token_logprob(logits: Tensor, tokens: Tensor) -> Tensor:
    """``log softmax(logits)[token]`` per row: ``[n, V], [n] -> [n]`` float32.

    Computed exactly as the sampling log-probabilities are (``log_softmax`` in :func:`compute_dtype`), so that at
    temperature 1 without top-k / top-p a token drawn from the student (or from the mixture with α = 0) has
    ``student_logprobs == sampling_logprobs`` bit for bit: MiniLLM's importance weight is then exactly 1.
    """
    log_probs = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
    return log_probs.gather(-1, tokens[:, None]).squeeze(-1).float()


def warped_log_probs(logits: Tensor, warp: Callable[[Tensor], Tensor]) -> Tensor:
    """``log_softmax(warp(logits))``: ``[..., V] -> [..., V]`` in :func:`compute_dtype`, the distribution a model's
    tokens are drawn from (:func:`draw_from`, :func:`select_tokens`)."""
    return torch.log_softmax(warp(logits), dim=-1)


def warp_is_identity(settings: RolloutSettings) -> bool:
    """Whether :func:`warper` leaves the logits as they are (temperature 1, no top-k, no top-p): the warped
    log-probabilities are then, bit for bit, the raw ones of :func:`token_logprob`."""
    return settings.temperature == 1.0 and settings.top_k == 0 and settings.top_p == 1.0


def draw_from(
    logits: Tensor, uniform: Tensor, settings: RolloutSettings, warp: Callable[[Tensor], Tensor],
    log_probs: Tensor | None = None,
) -> Tensor:
    """The token one model emits as the source at a position: argmax when greedy, else drawn from its warped
    distribution with the position's token uniform. ``[n, V], [n] -> [n]`` long. ``log_probs``: the
    :func:`warped_log_probs` of ``logits`` when already at hand (not computed again).

    This is what :func:`select_tokens` emits at positions whose source is this model (for ``mixture``: whose drawn
    component is this model), so a speculative draft made with it is accepted exactly where that model is chosen.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    return sample_inverse_cdf(log_probs if log_probs is not None else warped_log_probs(logits, warp), uniform)


def select_from_draws(
    draws: dict[str, Tensor], log_probs: dict[str, Tensor] | None, use_teacher: Tensor, settings: RolloutSettings
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_tokens` from both models' own draws, for every strategy but ``mixture`` and ``skd``.

    There the token of a position is the :func:`draw_from` of its source with the :data:`TOKEN_DRAW` uniform
    (:func:`draw_purpose`), and its sampling log-probability the source's warped log-probability of it, so with
    each model's draw at hand selecting costs no further pass over the vocabulary.

    Args:
        draws: ``{"student": [n], "teacher": [n]}`` long, each model's :func:`draw_from` with :data:`TOKEN_DRAW`.
        log_probs: ``{"student": [n, V], "teacher": [n, V]}``, each model's :func:`warped_log_probs` (None when
            greedy).
        use_teacher: ``[n]`` bool, the source of each position.
        settings: the rollout settings.

    Returns:
        ``(tokens [n] long, sampling log-prob [n] float32, use_teacher [n] bool)`` as :func:`select_tokens`.

    Raises:
        ValueError: the strategy is ``mixture`` or ``skd`` (their tokens or log-probabilities are not a draw's), or
            ``log_probs`` is None when sampling.
    """
    if settings.strategy in ("mixture", "skd"):
        raise ValueError(f"select_from_draws does not cover strategy {settings.strategy!r}: use select_tokens")
    tokens = torch.where(use_teacher, draws["teacher"], draws["student"])
    if settings.greedy:
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device), use_teacher
    if log_probs is None:
        raise ValueError("select_from_draws needs both models' log_probs when sampling")
    by_model = {name: lp.gather(-1, tokens[:, None]).squeeze(-1) for name, lp in log_probs.items()}
    return tokens, torch.where(use_teacher, by_model["teacher"], by_model["student"]).float(), use_teacher


def select_tokens(
    q: Tensor | None,
    p: Tensor | None,
    use_teacher: Tensor,
    uniforms: Tensor,
    settings: RolloutSettings,
    warp: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw the tokens of n positions from their chosen sources.

    Args:
        q: ``[n, V]`` student logits (None when the student is not run).
        p: ``[n, V]`` teacher logits (None when the teacher is not run).
        use_teacher: ``[n]`` bool, the source of each position (:func:`switch_core.rollout.gate.decide` or
            :func:`switch_core.rollout.gate.adaswitch_decide`; ignored by ``skd``).
        uniforms: ``[n, PURPOSES]`` the positions' keyed uniforms (:data:`TOKEN_DRAW` draws the token;
            :data:`TEACHER_DRAW` the teacher's replacement of ``skd``).
        settings: the rollout settings (strategy, greedy, mixture α, SKD's K).
        warp: :func:`warper` of the settings.

    Returns:
        ``(tokens [n] long, sampling log-prob [n] float32, use_teacher [n] bool)``. The sampling log-probability is
        that of the distribution the token was drawn from (the mixture ``α·p̃ + (1−α)·q̃`` for ``mixture``; 0 when
        greedy). Greedy ``mixture`` takes the argmax of the mixture and reports as source the component with the
        larger weighted probability of that token.

    ``skd`` (:func:`switch_core.rollout.gate.skd_rejects`): the student proposes with :func:`draw_from` and
    :data:`TOKEN_DRAW`; where the proposal is outside the teacher's top ``skd_top_k`` tokens the teacher draws with
    :func:`draw_from` and :data:`TEACHER_DRAW` instead, and the source is the teacher. Temperature, top-k and top-p
    shape both draws alike (SKD's code gives each model its own temperature and top-p; here they share the
    rollout's); the top-K test ranks the raw teacher logits. The sampling log-probability is that of the drawing
    model's warped distribution (the student's for a kept proposal, the teacher's for a replacement), not the
    marginal probability of the token under the whole propose-and-replace procedure.
    """
    uniform = uniforms[:, TOKEN_DRAW]
    if settings.strategy == "skd":
        proposal = draw_from(q, uniform, settings, warp)
        replace = skd_rejects(p, proposal, settings.skd_top_k)
        tokens = torch.where(replace, draw_from(p, uniforms[:, TEACHER_DRAW], settings, warp), proposal)
        if settings.greedy:
            return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device), replace
        log_probs = torch.log_softmax(warp(torch.where(replace[:, None], p, q)), dim=-1)
        return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1).float(), replace
    if settings.strategy == "mixture":
        alpha = settings.mixture_alpha
        log_p = torch.log_softmax(warp(p), dim=-1)
        log_q = torch.log_softmax(warp(q), dim=-1)
        weighted_p = log_p + (math.log(alpha) if alpha > 0 else -math.inf)
        weighted_q = log_q + (math.log1p(-alpha) if alpha < 1 else -math.inf)
        log_mix = torch.logaddexp(weighted_p, weighted_q)
        if settings.greedy:
            tokens = log_mix.argmax(dim=-1)
            use_teacher = (weighted_p.gather(-1, tokens[:, None]) > weighted_q.gather(-1, tokens[:, None])).squeeze(-1)
            return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device), use_teacher
        tokens = sample_inverse_cdf(torch.where(use_teacher[:, None], log_p, log_q), uniform)
        return tokens, log_mix.gather(-1, tokens[:, None]).squeeze(-1).float(), use_teacher
    if p is None:
        logits = q
    elif q is None:
        logits = p
    else:
        logits = torch.where(use_teacher[:, None], p, q)
    if settings.greedy:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device), use_teacher
    log_probs = torch.log_softmax(warp(logits), dim=-1)
    tokens = sample_inverse_cdf(log_probs, uniform)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1).float(), use_teacher
