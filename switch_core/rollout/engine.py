"""Lockstep two-cache decoding of a student and a teacher: SWITCH rollouts and the baselines' samplers.

One call decodes a batch of left-padded prompts with both models side by side, each with its own KV cache
(method.md §1.3). At response position t and for every unfinished row:

1. the student's logits ``q_t`` and the teacher's logits ``p_t`` for the next token are at hand;
2. the strategy picks the source of the token:

   - ``switch``: the teacher when ``JSD(p_t, q_t) > τ_t`` (symmetric JSD, β = 0.5, after the temperature;
     τ_t from :mod:`switch_core.rollout.schedules`), else the student (method.md §1.1);
   - ``student``: always the student (pure on-policy sampling: ImitKD / GKD / DistiLLM rollouts, §6.4-6.7);
   - ``teacher``: always the teacher (teacher sampling, SeqKD-like, §6.3);
   - ``random``: the teacher with probability ``random_rate``, independently of the divergence (the ablation's
     random intervention at a matched rate, §2);
   - ``mixture``: a token from ``α·p̃ + (1−α)·q̃`` (MiniLLM's teacher-mixed sampling, §6.5; ``p̃`` and ``q̃`` are the
     models' distributions after temperature, top-k and top-p). When sampling, the component is drawn first
     (teacher with probability α) and the token from it, which is the same distribution; the drawn component is
     recorded as the source. Greedy decoding takes the argmax of the mixture and records as source the component
     with the larger weighted probability of that token. ``sampling_logprobs`` holds ``log(α·p̃(y) + (1−α)·q̃(y))``,
     so MiniLLM's importance weight is ``exp(student_logprobs − sampling_logprobs)``. (``random`` draws from the
     same distribution but reports the log-probability under the drawn component);

3. the token is drawn from the source's distribution (temperature, top-k, top-p; inverse-CDF sampling with the
   given ``torch.Generator``; or argmax when greedy) and appended to both caches. A row stops after emitting a stop
   token; later positions hold the pad id, are masked out and cost no decision. When at most 3/4 of the rows in the
   compute batch are still running, the finished rows are dropped from both caches, so long tails do not pay for
   short rows.

Teacher and student must pass `switch_core.models.compat.check_compatible` (same vocabulary size); they may sit on
different devices (decisions are taken on the student's). Position ids are ``cumsum(attention_mask) − 1`` clamped
at 0 (ARCHITECTURE.md), which matches unpadded decoding for GPT-2, OPT and Llama-style models. Models are called as
Hugging Face causal LMs (transformers 5):
``model(input_ids=, attention_mask=, position_ids=, cache=, use_cache=True, logits_to_keep=1)`` returning an object
with ``.logits [n, k, V]`` and ``.cache`` (a ``DynamicCache``; ``cache.batch_select_indices`` is used to drop rows).
The models run in eval mode under ``torch.no_grad`` and their training flags are restored afterwards; passing
``use_cache=True`` in eval mode keeps the KV cache on even when the student has gradient checkpointing enabled
(landscape.md pain points 1-2). ``torch.no_grad`` rather than ``torch.inference_mode``: inference-mode tensors
cannot be saved for backward, and the returned tokens and teacher logits feed the student's training loss.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TopKLogitsWarper, TopPLogitsWarper

from switch_core.divergences import jensen_shannon
from switch_core.models.device import model_device
from switch_core.rollout.settings import (  # noqa: F401  (re-exported: the settings lived here)
    STRATEGIES,
    TEACHER_LOGITS_DTYPES,
    RolloutSettings,
    RolloutSettingsError,
)

GATE_BETA = 0.5
"""β of the JSD in SWITCH's intervention test: the symmetric JSD (method.md §1.1)."""

_COMPACT_FRACTION = 0.75  # drop finished rows from the caches once at most this fraction of compute rows runs


class RolloutInputError(ValueError):
    """Prompt tensors are malformed (shape, dtype, not left-padded, empty row) or ids fall outside the vocabulary."""


@dataclass
class RolloutTimer:
    """Optional timing hooks: accumulates wall seconds of the student and teacher forwards and of token selection.

    Pass one to :func:`rollout` (``timer=``); without it the engine does no timing at all. On CUDA devices each
    section synchronises before reading the clock.
    """

    seconds: dict[str, float] = field(default_factory=lambda: {"student": 0.0, "teacher": 0.0, "select": 0.0})

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``seconds[name]``."""
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class RolloutBatch:
    """The result of :func:`rollout` for B prompts and T response steps (T <= max_new_tokens).

    Response position t of row b is ``tokens[b, t]``; it was predicted from the prompt and ``tokens[b, :t]``.

    Attributes:
        prompt_ids: ``[B, Lp]`` long, left-padded prompts as given.
        prompt_mask: ``[B, Lp]`` long, 1 on prompt tokens.
        tokens: ``[B, T]`` long, generated tokens; the pad id after a row's stop token.
        response_mask: ``[B, T]`` bool, True on generated tokens including the stop token.
        teacher_chosen: ``[B, T]`` bool, True where the teacher emitted the token (False on padding).
        divergence: ``[B, T]`` float32, the gate's JSD (β = 0.5, after the temperature) at each step; NaN where it
            was not computed (``compute_divergence=False`` and not ``switch``); 0 on padding.
        threshold: ``[T]`` float32, τ_t of the configured schedule (recorded for every strategy; only ``switch`` acts
            on it; NaN when τ0 is not set).
        sampling_logprobs: ``[B, T]`` float32, log-probability of the token under the distribution it was drawn from
            (after temperature / top-k / top-p; the mixture for ``mixture``); 0 for greedy decoding and padding.
        student_logprobs: ``[B, T]`` float32, log q(token) under the student's raw (temperature 1) distribution;
            NaN where the student was not run; 0 on padding.
        teacher_logprobs: ``[B, T]`` float32, log p(token) under the teacher's raw distribution; NaN where the teacher
            was not run; 0 on padding.
        teacher_logits: ``[B, T, V]`` raw teacher logits in ``teacher_logits_dtype`` (None unless
            ``keep_teacher_logits``): position t holds the teacher's prediction of ``tokens[:, t]``, exactly what a
            distillation loss on the mixed sequence needs; zeros on padding. May be a view of a
            ``[B, max_new_tokens, V]`` buffer.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    tokens: Tensor
    response_mask: Tensor
    teacher_chosen: Tensor
    divergence: Tensor
    threshold: Tensor
    sampling_logprobs: Tensor
    student_logprobs: Tensor
    teacher_logprobs: Tensor
    teacher_logits: Tensor | None = None

    def teacher_share(self) -> float:
        """Fraction of generated tokens emitted by the teacher (the paper's 53% diagnostic); NaN when empty."""
        valid = int(self.response_mask.sum())
        return float(self.teacher_chosen[self.response_mask].sum()) / valid if valid else math.nan

    def teacher_share_by_position(self) -> Tensor:
        """``[T]`` float32 teacher share at each response position over the rows still running; NaN where none."""
        counts = self.response_mask.sum(dim=0).to(torch.float32)
        teacher = (self.teacher_chosen & self.response_mask).sum(dim=0).to(torch.float32)
        return torch.where(counts > 0, teacher / counts.clamp_min(1), torch.full_like(counts, math.nan))

    def full_sequences(self) -> tuple[Tensor, Tensor]:
        """The prompt followed by the response, for scoring the mixed sequence with teacher or student.

        Returns:
            ``(input_ids, attention_mask)``, both ``[B, Lp + T]`` long: left-padded prompt, right-padded response.
            The logits at position ``Lp − 1 + t`` predict ``tokens[:, t]``.
        """
        ids = torch.cat([self.prompt_ids, self.tokens], dim=1)
        mask = torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)
        return ids, mask

    def to_rows(self, tokenizer: Any = None) -> list[dict[str, Any]]:
        """One dict per row, in batch order.

        Args:
            tokenizer: optional Hugging Face tokenizer to decode ``text``.

        Returns:
            Dicts with ``prompt_token_ids`` (padding removed), ``token_ids`` (generated tokens incl. the stop token),
            ``sources`` (``"student" | "teacher"`` per token), ``divergence``, ``threshold`` (τ_t per token; None
            when τ0 is not set) and ``text`` (decoded with ``skip_special_tokens=True``; None without a tokenizer).
        """
        prompt_ids, prompt_mask = self.prompt_ids.cpu().tolist(), self.prompt_mask.cpu().tolist()
        tokens, valid = self.tokens.cpu().tolist(), self.response_mask.cpu().tolist()
        teacher, divergence = self.teacher_chosen.cpu().tolist(), self.divergence.cpu().tolist()
        tau = [None if math.isnan(x) else x for x in self.threshold.cpu().tolist()]  # None: τ0 not set
        rows = []
        for b in range(len(tokens)):
            n = sum(valid[b])
            token_ids = tokens[b][:n]
            rows.append({
                "prompt_token_ids": [i for i, m in zip(prompt_ids[b], prompt_mask[b]) if m],
                "token_ids": token_ids,
                "sources": ["teacher" if x else "student" for x in teacher[b][:n]],
                "divergence": divergence[b][:n],
                "threshold": tau[:n],
                "text": tokenizer.decode(token_ids, skip_special_tokens=True) if tokenizer is not None else None,
            })
        return rows


class _Decoder:
    """One model and its KV cache; returns next-token logits on the decision device."""

    def __init__(self, model: nn.Module, out_device: torch.device) -> None:
        self.model = model
        self.device = model_device(model)
        self.out_device = out_device
        self.cache: Any = None

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Feed ``input_ids [n, k]`` (the whole prompt, then one token per step); ``attention_mask [n, L]`` covers
        everything fed so far. Returns ``[n, V]`` logits for the next token."""
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        return out.logits[:, -1].to(self.out_device)

    def keep_rows(self, rows: Tensor) -> None:
        """Drop every cache row not in ``rows`` (a 1-D index tensor)."""
        if self.cache is not None:
            self.cache.batch_select_indices(rows.to(self.device))


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, flag in flags:
            model.train(flag)


def _check_prompts(prompt_ids: Tensor, prompt_mask: Tensor) -> None:
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
        raise RolloutInputError(f"prompt_ids must be a non-empty [batch, length] tensor, got {tuple(prompt_ids.shape)}")
    if prompt_ids.dtype not in (torch.int64, torch.int32):
        raise RolloutInputError(f"prompt_ids must hold integer token ids (torch.long), got {prompt_ids.dtype}")
    if prompt_mask.shape != prompt_ids.shape:
        raise RolloutInputError(
            f"prompt_mask {tuple(prompt_mask.shape)} must have the shape of prompt_ids {tuple(prompt_ids.shape)}"
        )
    mask = prompt_mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise RolloutInputError("prompt_mask must hold only 0 (padding) and 1 (prompt token)")
    empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise RolloutInputError(f"prompt rows {empty} are empty (all padding): every prompt needs at least one token")
    not_left = (mask[:, 1:] < mask[:, :-1]).any(dim=1).nonzero().flatten().tolist()
    if not_left:
        raise RolloutInputError(
            f"prompt rows {not_left} are not left-padded (padding after a prompt token): pad on the left, e.g. with "
            "switch_core.data.tokenize.left_pad"
        )
    if (prompt_ids < 0).any():
        raise RolloutInputError("prompt_ids hold negative token ids")


def _check_vocab(settings: RolloutSettings, prompt_ids: Tensor, model: nn.Module) -> None:
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab_size, int):
        return
    ids = {"pad_token_id": [settings.pad_token_id], "stop_token_ids": list(settings.stop_token_ids)}
    for name, values in ids.items():
        if any(v >= vocab_size for v in values):
            raise RolloutInputError(f"{name}={values} is outside the models' vocabulary of {vocab_size} tokens")
    if int(prompt_ids.max()) >= vocab_size:
        raise RolloutInputError(f"prompt_ids hold id {int(prompt_ids.max())} >= the vocabulary size {vocab_size}")


def _warper(settings: RolloutSettings) -> Callable[[Tensor], Tensor]:
    """float32 logits -> temperature-scaled logits with top-k / top-p filtered entries set to −inf."""
    top_k = TopKLogitsWarper(settings.top_k) if settings.top_k > 0 else None
    top_p = TopPLogitsWarper(settings.top_p) if settings.top_p < 1.0 else None

    def warp(logits: Tensor) -> Tensor:
        logits = logits.float()
        if settings.temperature != 1.0:
            logits = logits / settings.temperature
        if top_k is not None:
            logits = top_k(None, logits)
        if top_p is not None:
            logits = top_p(None, logits)
        return logits

    return warp


def _sample(log_probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from ``exp(log_probs) [n, V]`` by inverse-CDF sampling: ``[n]`` long.

    Same distribution as ``torch.multinomial`` at a fraction of its CPU cost for large vocabularies. Tokens of
    probability 0 (filtered by top-k / top-p) are never drawn: their CDF step is empty.
    """
    cdf = log_probs.exp().cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype) * total
    tokens = torch.searchsorted(cdf, u, right=True)
    # u rounded up to the total (probability ~1e-7): take the last token of positive probability
    last = torch.searchsorted(cdf, total, right=False)
    return torch.where(tokens < cdf.shape[-1], tokens, last).squeeze(-1)


def _token_logprob(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] per row, float32: ``[n, V], [n] -> [n]``.

    Computed exactly as the sampling log-probabilities are (``log_softmax`` of the float32 logits), so that at
    temperature 1 without top-k / top-p a token drawn from the student (or from the mixture with α = 0) has
    ``student_logprobs == sampling_logprobs`` bit for bit: MiniLLM's importance weight is then exactly 1.
    """
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def _select(
    q: Tensor | None,
    p: Tensor | None,
    use_teacher: Tensor,
    settings: RolloutSettings,
    warp: Callable[[Tensor], Tensor],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw the next tokens. Returns ``(tokens [n] long, sampling log-prob [n] float32, use_teacher [n] bool)``."""
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
            return tokens, torch.zeros_like(tokens, dtype=torch.float32), use_teacher
        tokens = _sample(torch.where(use_teacher[:, None], log_p, log_q), generator)
        return tokens, log_mix.gather(-1, tokens[:, None]).squeeze(-1), use_teacher
    if p is None:
        logits = q
    elif q is None:
        logits = p
    else:
        logits = torch.where(use_teacher[:, None], p, q)
    if settings.greedy:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.zeros_like(tokens, dtype=torch.float32), use_teacher
    log_probs = torch.log_softmax(warp(logits), dim=-1)
    tokens = _sample(log_probs, generator)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1), use_teacher


def _masked(values: Tensor | None, active: Tensor) -> Tensor:
    """``values`` on running rows and 0 on finished ones; NaN on running rows when ``values`` is None."""
    if values is None:
        values = torch.full(active.shape, math.nan, dtype=torch.float32, device=active.device)
    return torch.where(active, values.float(), 0.0)


def _teacher_decision(
    settings: RolloutSettings, n: int, divergence: Tensor | None, tau: Tensor, generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """``[n]`` bool: which rows take the teacher's token (for ``mixture``: the drawn component)."""
    if settings.strategy == "switch":
        return divergence > tau
    if settings.strategy == "student":
        return torch.zeros(n, dtype=torch.bool, device=device)
    if settings.strategy == "teacher":
        return torch.ones(n, dtype=torch.bool, device=device)
    rate = settings.random_rate if settings.strategy == "random" else settings.mixture_alpha
    if settings.strategy == "mixture" and settings.greedy:
        return torch.zeros(n, dtype=torch.bool, device=device)  # decided from the mixture in _select
    return torch.rand(n, generator=generator, device=device) < rate


def rollout(
    student: nn.Module,
    teacher: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    settings: RolloutSettings,
    *,
    generator: torch.Generator | None = None,
    timer: RolloutTimer | None = None,
) -> RolloutBatch:
    """Decode responses to a batch of prompts with the student and the teacher in lockstep (module docstring).

    Args:
        student: Hugging Face causal LM (or anything with the same forward signature; module docstring).
        teacher: causal LM with the same vocabulary; may sit on another device (logits are moved to the
            student's device, where decisions are taken and results are stored).
        prompt_ids: ``[B, Lp]`` long, left-padded prompts.
        prompt_mask: ``[B, Lp]``, 1 on prompt tokens, 0 on the leading padding; every row non-empty.
        settings: decoding settings.
        generator: ``torch.Generator`` on the student's device for sampling and the random / mixture draws; the
            same seed and inputs give the same rollout. None uses torch's global generator.
        timer: optional :class:`RolloutTimer` collecting time spent in each model and in token selection.

    Returns:
        A :class:`RolloutBatch` on the student's device.

    Raises:
        switch_core.models.compat.IncompatibleModelsError: the models cannot be paired (e.g. vocabulary sizes).
        RolloutInputError: malformed prompts, or pad / stop / prompt ids outside the vocabulary.
    """
    from switch_core.models.compat import check_compatible

    check_compatible(teacher, student)
    _check_prompts(prompt_ids, prompt_mask)
    _check_vocab(settings, prompt_ids, student)
    with _eval_mode(student, teacher), torch.no_grad():
        return _decode(student, teacher, prompt_ids, prompt_mask, settings, generator, timer)


def _decode(
    student: nn.Module,
    teacher: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    settings: RolloutSettings,
    generator: torch.Generator | None,
    timer: RolloutTimer | None,
) -> RolloutBatch:
    device = model_device(student)

    def section(name: str) -> Any:
        return timer.section(name) if timer is not None else nullcontext()

    prompt_ids, prompt_mask = prompt_ids.to(device).long(), prompt_mask.to(device).long()
    student_decoder = _Decoder(student, device) if settings.runs_student else None
    teacher_decoder = _Decoder(teacher, device) if settings.runs_teacher else None
    decoders = [d for d in (student_decoder, teacher_decoder) if d is not None]
    gate = settings.strategy == "switch" or (settings.compute_divergence and len(decoders) == 2)
    warp = _warper(settings)
    taus = settings.thresholds(device)
    stop_ids = torch.tensor(settings.stop_token_ids, dtype=torch.long, device=device)

    batch, steps = prompt_ids.shape[0], settings.max_new_tokens
    tokens = torch.full((batch, steps), settings.pad_token_id, dtype=torch.long, device=device)
    response_mask = torch.zeros((batch, steps), dtype=torch.bool, device=device)
    teacher_chosen = torch.zeros_like(response_mask)
    divergence, sampling_lp, student_lp, teacher_lp = (
        torch.zeros((batch, steps), dtype=torch.float32, device=device) for _ in range(4)
    )
    teacher_logits: Tensor | None = None

    rows = torch.arange(batch, device=device)  # original row of each compute row
    mask = prompt_mask
    with section("student"):
        q = student_decoder(prompt_ids, mask) if student_decoder is not None else None
    with section("teacher"):
        p = teacher_decoder(prompt_ids, mask) if teacher_decoder is not None else None
    vocab_size = (q if q is not None else p).shape[-1]
    if settings.keep_teacher_logits:
        dtype = TEACHER_LOGITS_DTYPES[settings.teacher_logits_dtype]
        teacher_logits = torch.zeros((batch, steps, vocab_size), dtype=dtype, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    used = 0
    for t in range(steps):
        with section("select"):
            # Every compute row is written at step t; finished rows get the padding values (pad id, False, 0), so
            # no boolean indexing (a device synchronisation on GPU) is needed.
            jsd = jensen_shannon(q, p, temperature=settings.temperature, beta=GATE_BETA) if gate else None
            use_teacher = _teacher_decision(settings, rows.shape[0], jsd, taus[t], generator, device)
            step_tokens, step_lp, use_teacher = _select(q, p, use_teacher, settings, warp, generator)
            active = ~finished
            step_tokens = torch.where(active, step_tokens, settings.pad_token_id)
            tokens[rows, t] = step_tokens
            response_mask[rows, t] = active
            teacher_chosen[rows, t] = use_teacher & active
            divergence[rows, t] = _masked(jsd, active)
            sampling_lp[rows, t] = _masked(step_lp, active)
            student_lp[rows, t] = _masked(_token_logprob(q, step_tokens) if q is not None else None, active)
            teacher_lp[rows, t] = _masked(_token_logprob(p, step_tokens) if p is not None else None, active)
            if teacher_logits is not None:
                teacher_logits[rows, t] = torch.where(active[:, None], p, 0.0).to(teacher_logits.dtype)
            finished = finished | torch.isin(step_tokens, stop_ids)
            used = t + 1
            running = int((~finished).sum())
            if running == 0 or t == steps - 1:
                break
            if running <= _COMPACT_FRACTION * rows.shape[0]:
                keep = (~finished).nonzero().flatten()
                rows, mask, step_tokens, finished = rows[keep], mask[keep], step_tokens[keep], finished[keep]
                for decoder in decoders:
                    decoder.keep_rows(keep)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        with section("student"):
            q = student_decoder(step_tokens[:, None], mask) if student_decoder is not None else None
        with section("teacher"):
            p = teacher_decoder(step_tokens[:, None], mask) if teacher_decoder is not None else None

    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        tokens=tokens[:, :used],
        response_mask=response_mask[:, :used],
        teacher_chosen=teacher_chosen[:, :used],
        divergence=divergence[:, :used],
        threshold=taus[:used],
        sampling_logprobs=sampling_lp[:, :used],
        student_logprobs=student_lp[:, :used],
        teacher_logprobs=teacher_lp[:, :used],
        teacher_logits=teacher_logits[:, :used] if teacher_logits is not None else None,
    )
