"""Two-model decoding of a student and a teacher: SWITCH rollouts and the baselines' samplers.

One call decodes a batch of left-padded prompts with both models, each with its own KV cache (docs/METHOD.md §1.3). At
response position t and for every unfinished row:

1. the student's logits ``q_t`` and the teacher's logits ``p_t`` for the next token are at hand;
2. the strategy picks the source of the token (:mod:`switch_core.rollout.gate`):

   - ``switch``: the teacher when ``JSD(p_t, q_t) > τ_t`` (symmetric JSD, β = 0.5, after the temperature;
     τ_t from :mod:`switch_core.rollout.schedules`), else the student (docs/METHOD.md §1.1);
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
   - ``skd``: the student proposes a token; the teacher draws its own token (with its own keyed uniform) where the
     proposal is outside the teacher's top ``skd_top_k`` (speculative KD, docs/METHOD.md §8);
   - ``adaswitch``: the student writes until the JSD exceeds ``adaswitch_k`` times its mean over the previous
     ``adaswitch_window`` positions, the teacher from then on to the end of the row (AdaSwitch, docs/METHOD.md §8).
     The row's state is read from its kept positions (:meth:`Responses.history`), so the speculative engine's
     discarded drafts leave no trace in it;

3. the token is drawn from the source's distribution (temperature, top-k, top-p; inverse-CDF sampling; or argmax
   when greedy). Every random number is keyed by position (:func:`switch_core.rollout.sampling.keyed_uniforms`: one
   uniform per row, response position and purpose, drawn from the ``torch.Generator`` at the start of the call), so
   the token at a position depends on ``(p_t, q_t)`` and that position's uniforms alone. A row stops after emitting
   a stop token; later positions hold the pad id and are masked out.

Two engines compute the same rollout (``RolloutSettings.engine``):

- ``lockstep`` (this module): both models advance one token at a time, side by side. Finished rows are dropped from
  both caches once at most 3/4 of the rows in the compute batch are still running.
- ``speculative`` (:mod:`switch_core.rollout.speculative`, the default): the model expected to write the next stretch
  drafts a chunk, the other scores it in one forward pass, and the positions are checked in order with the same
  gate and the same keyed draws; the first position whose token differs from the draft ends the chunk. Same tokens,
  sources, divergences, thresholds, log-probabilities and teacher logits as lockstep (up to floating-point rounding
  of the batched forward), for fewer model calls. When only one model is run (``student`` / ``teacher`` without the
  other's outputs) both engines are plain single-model decoding.

Teacher and student must pass `switch_core.models.compat.check_compatible` (same vocabulary size); they may sit on
different devices (decisions are taken on the student's). Position ids are ``cumsum(attention_mask) − 1`` clamped
at 0 (ARCHITECTURE.md), which matches unpadded decoding for GPT-2, OPT and Llama-style models. Models are called as
Hugging Face causal LMs (transformers 5):
``model(input_ids=, attention_mask=, position_ids=, cache=, use_cache=True, logits_to_keep=k)`` returning an object
with ``.logits [n, k, V]`` and ``.cache`` (a ``DynamicCache``; ``cache.batch_select_indices`` is used to drop rows).
The models run in eval mode under ``torch.no_grad`` and their training flags are restored afterwards; passing
``use_cache=True`` in eval mode keeps the KV cache on even when the student has gradient checkpointing enabled
(docs/METHOD.md §A.1). ``torch.no_grad`` rather than ``torch.inference_mode``: inference-mode tensors
cannot be saved for backward, and the returned tokens and teacher logits feed the student's training loss.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from switch_core.models.device import model_device
from switch_core.rollout.gate import adaswitch_decide, decide, gate_divergence
from switch_core.rollout.sampling import (
    COMPONENT_DRAW,
    keyed_uniforms,
    select_tokens,
    token_logprob,
    warper,
)
from switch_core.rollout.settings import (  # noqa: F401  (re-exported: the settings lived here)
    ENGINES,
    STRATEGIES,
    TEACHER_LOGITS_DTYPES,
    RolloutSettings,
    RolloutSettingsError,
)

COMPACT_FRACTION = 0.75
"""Finished rows are dropped from the caches once at most this fraction of the compute rows is running."""


class RolloutInputError(ValueError):
    """Prompt tensors are malformed (shape, dtype, not left-padded, empty row) or ids fall outside the vocabulary."""


@dataclass
class RolloutTimer:
    """Optional timing hooks: accumulates wall seconds of the student and teacher forwards and of token selection.

    Pass one to :func:`rollout` (``timer=``); without it the engine does no timing at all. On CUDA devices each
    section synchronises before reading the clock. The speculative engine also counts, over the rows still running
    in each chunk: ``chunks`` (row-chunks), ``teacher_drafts`` (row-chunks the teacher drafted), ``drafted`` (draft
    tokens), ``accepted`` (draft tokens kept as drawn) and ``forwards`` (model calls); the mean accepted draft length
    is ``accepted / chunks`` and the share of drafted tokens discarded ``1 − accepted / drafted``.
    """

    seconds: dict[str, float] = field(default_factory=lambda: {"student": 0.0, "teacher": 0.0, "select": 0.0})
    counts: dict[str, int] = field(
        default_factory=lambda: {"chunks": 0, "teacher_drafts": 0, "drafted": 0, "accepted": 0, "forwards": 0}
    )

    def count(self, **increments: int) -> None:
        """Add ``increments`` to ``counts``."""
        for name, value in increments.items():
            self.counts[name] = self.counts.get(name, 0) + int(value)

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
            was not computed (``compute_divergence=False`` and neither ``switch`` nor ``adaswitch``); 0 on padding.
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

    def teacher_counts(self) -> tuple[Tensor, Tensor]:
        """The one count behind every teacher share of rollouts (the paper's 53% diagnostic, docs/METHOD.md §1.1
        item 4): ``(teacher tokens [T], generated tokens [T])``, long, per response position over the rows still
        running. Overall share = ``teacher.sum() / tokens.sum()``."""
        return (self.teacher_chosen & self.response_mask).sum(dim=0), self.response_mask.sum(dim=0)

    def teacher_share(self) -> float:
        """Fraction of generated tokens emitted by the teacher; NaN when empty."""
        teacher, tokens = self.teacher_counts()
        return int(teacher.sum()) / int(tokens.sum()) if int(tokens.sum()) else math.nan

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


class Decoder:
    """One model and its KV cache; returns next-token logits on the decision device (shared by both engines).

    The caller keeps one ``attention_mask [n, L]`` covering everything fed so far (0 on left padding and on the
    speculative engine's discarded positions, which are thereby invisible: positions are ``cumsum(mask) − 1``).
    """

    def __init__(self, model: nn.Module, out_device: torch.device) -> None:
        self.model = model
        self.device = model_device(model)
        self.out_device = out_device
        self.cache: Any = None
        self.calls = 0

    def forward(self, input_ids: Tensor, attention_mask: Tensor, keep: int = 1) -> Tensor:
        """Feed ``input_ids [n, k]`` (appended to the cache); ``attention_mask [n, L]`` covers everything fed so
        far, these k tokens included. Returns ``[n, keep, V]`` logits at the last ``keep`` fed positions."""
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        self.cache = out.cache
        self.calls += 1
        return out.logits[:, -keep:].to(self.out_device)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """:meth:`forward` keeping the last position: ``[n, V]`` logits for the next token."""
        return self.forward(input_ids, attention_mask, keep=1)[:, -1]

    def keep_rows(self, rows: Tensor) -> None:
        """Drop every cache row not in ``rows`` (a 1-D index tensor)."""
        if self.cache is not None:
            self.cache.batch_select_indices(rows.to(self.device))


def masked(values: Tensor | None, active: Tensor) -> Tensor:
    """``values`` (as float32) on active positions and 0 elsewhere; NaN on active positions when ``values`` is
    None."""
    if values is None:
        values = torch.full(active.shape, math.nan, dtype=torch.float32, device=active.device)
    return torch.where(active, values.float(), 0.0)


class Responses:
    """The ``[B, max_new_tokens]`` result buffers of one rollout, written position by position by either engine."""

    def __init__(self, settings: RolloutSettings, batch: int, vocab_size: int, device: torch.device) -> None:
        steps = settings.max_new_tokens
        self.pad_token_id = settings.pad_token_id
        self.tokens = torch.full((batch, steps), settings.pad_token_id, dtype=torch.long, device=device)
        self.response_mask = torch.zeros((batch, steps), dtype=torch.bool, device=device)
        self.teacher_chosen = torch.zeros_like(self.response_mask)
        self.divergence, self.sampling_lp, self.student_lp, self.teacher_lp = (
            torch.zeros((batch, steps), dtype=torch.float32, device=device) for _ in range(4)
        )
        self.teacher_logits: Tensor | None = None
        if settings.keep_teacher_logits:
            dtype = TEACHER_LOGITS_DTYPES[settings.teacher_logits_dtype]
            self.teacher_logits = torch.zeros((batch, steps, vocab_size), dtype=dtype, device=device)

    def write(
        self,
        rows: Tensor,
        positions: Tensor | int,
        *,
        active: Tensor,
        tokens: Tensor,
        use_teacher: Tensor,
        jsd: Tensor | None,
        sampling_lp: Tensor,
        q: Tensor | None,
        p: Tensor | None,
        token_logprobs: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Record n decided positions (``rows [n]`` original rows, ``positions`` response positions ``[n]`` or an
        int). Inactive positions (finished rows) get the padding values (pad id, False, 0; no boolean indexing, so
        no device synchronisation). ``q`` / ``p``: ``[n, V]`` logits the tokens were decided from, or None for a
        model not run. ``token_logprobs``: ``(student, teacher)`` :func:`~switch_core.rollout.sampling.token_logprob`
        of the tokens, ``[n]`` float32, when already at hand (``q`` is then not read, ``p`` only for the kept teacher
        logits). Returns the written tokens ``[n]`` (the pad id where inactive)."""
        tokens = torch.where(active, tokens, self.pad_token_id)
        self.tokens[rows, positions] = tokens
        self.response_mask[rows, positions] = active
        self.teacher_chosen[rows, positions] = use_teacher & active
        self.divergence[rows, positions] = masked(jsd, active)
        self.sampling_lp[rows, positions] = masked(sampling_lp, active)
        if token_logprobs is None:
            token_logprobs = tuple(token_logprob(x, tokens) if x is not None else None for x in (q, p))
        self.student_lp[rows, positions] = masked(token_logprobs[0], active)
        self.teacher_lp[rows, positions] = masked(token_logprobs[1], active)
        if self.teacher_logits is not None:
            self.teacher_logits[rows, positions] = torch.where(active[:, None], p, 0.0).to(self.teacher_logits.dtype)
        return tokens

    def history(self, rows: Tensor, starts: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
        """What :func:`switch_core.rollout.gate.adaswitch_decide` needs of the kept positions before ``starts``.

        Args:
            rows: ``[n]`` original rows.
            starts: ``[n]`` long, each row's first undecided response position.
            window: the averaging window W.

        Returns:
            ``(divergence [n, W] float32, valid [n, W] bool, switched [n] bool)``: the stored JSD of positions
            ``starts − W .. starts − 1`` (oldest first; invalid before position 0) and whether the teacher wrote
            position ``starts − 1`` (under ``adaswitch`` the teacher writes from the switch on, so this is the
            row's switch state). Only kept positions are stored, so a discarded draft leaves no trace.
        """
        slots = starts[:, None] - window + torch.arange(window, device=starts.device)
        valid = slots >= 0
        divergence = self.divergence[rows[:, None], slots.clamp_min(0)]
        switched = (starts > 0) & self.teacher_chosen[rows, (starts - 1).clamp_min(0)]
        return torch.where(valid, divergence, 0.0), valid, switched

    def batch(self, prompt_ids: Tensor, prompt_mask: Tensor, taus: Tensor, used: int) -> RolloutBatch:
        """The :class:`RolloutBatch` of the first ``used`` response positions."""
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            tokens=self.tokens[:, :used],
            response_mask=self.response_mask[:, :used],
            teacher_chosen=self.teacher_chosen[:, :used],
            divergence=self.divergence[:, :used],
            threshold=taus[:used],
            sampling_logprobs=self.sampling_lp[:, :used],
            student_logprobs=self.student_lp[:, :used],
            teacher_logprobs=self.teacher_lp[:, :used],
            teacher_logits=self.teacher_logits[:, :used] if self.teacher_logits is not None else None,
        )


def choose_sources(
    settings: RolloutSettings, out: Responses, rows: Tensor, starts: Tensor, jsd: Tensor | None, tau: Tensor,
    component_draw: Tensor,
) -> Tensor:
    """The source of c consecutive positions per row (shared by both engines): ``adaswitch`` from the row's kept
    history (:meth:`Responses.history`) and the block's JSD, every other strategy position by position
    (:func:`switch_core.rollout.gate.decide`).

    Args:
        settings: the rollout settings.
        out: the result buffers written so far.
        rows: ``[n]`` original rows; ``starts``: ``[n]`` each row's first position of the block.
        jsd: ``[n, c]`` the gate's JSD (None when not computed); ``tau``: τ_t broadcastable to ``[n, c]``;
            ``component_draw``: ``[n, c]`` the :data:`~switch_core.rollout.sampling.COMPONENT_DRAW` uniforms.

    Returns:
        ``[n, c]`` bool, True where the teacher writes (``skd``: decided later, with the token).
    """
    if settings.strategy == "adaswitch":
        history, valid, switched = out.history(rows, starts, settings.adaswitch_window)
        return adaswitch_decide(history, valid, jsd.float(), switched, settings.adaswitch_window, settings.adaswitch_k)
    return decide(
        settings.strategy, divergence=jsd, tau=tau, component_draw=component_draw, random_rate=settings.random_rate,
        mixture_alpha=settings.mixture_alpha, greedy=settings.greedy,
    )


def draws_needed(settings: RolloutSettings) -> bool:
    """Whether a rollout draws random numbers: when sampling, and for ``random`` (its source) even when greedy."""
    return not settings.greedy or settings.strategy == "random"


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
    """Decode responses to a batch of prompts with the student and the teacher (module docstring).

    Args:
        student: Hugging Face causal LM (or anything with the same forward signature; module docstring).
        teacher: causal LM with the same vocabulary; may sit on another device (logits are moved to the
            student's device, where decisions are taken and results are stored).
        prompt_ids: ``[B, Lp]`` long, left-padded prompts.
        prompt_mask: ``[B, Lp]``, 1 on prompt tokens, 0 on the leading padding; every row non-empty.
        settings: decoding settings (``settings.engine`` picks the engine; both give the same rollout).
        generator: ``torch.Generator`` on the student's device; the uniforms of every position are drawn from it
            at the start of the call (:func:`switch_core.rollout.sampling.keyed_uniforms`): the same seed and inputs
            give the same rollout with either engine. None uses torch's global generator.
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
        if settings.engine == "speculative" and settings.runs_student and settings.runs_teacher:
            from switch_core.rollout.speculative import decode_speculative

            return decode_speculative(student, teacher, prompt_ids, prompt_mask, settings, generator, timer)
        return _decode_lockstep(student, teacher, prompt_ids, prompt_mask, settings, generator, timer)


def _decode_lockstep(
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
    student_decoder = Decoder(student, device) if settings.runs_student else None
    teacher_decoder = Decoder(teacher, device) if settings.runs_teacher else None
    decoders = [d for d in (student_decoder, teacher_decoder) if d is not None]
    gate = settings.needs_divergence or (settings.compute_divergence and len(decoders) == 2)
    warp = warper(settings.temperature, settings.top_k, settings.top_p)
    taus = settings.thresholds(device)
    stop_ids = torch.tensor(settings.stop_token_ids, dtype=torch.long, device=device)
    batch, steps = prompt_ids.shape[0], settings.max_new_tokens
    uniforms = keyed_uniforms(generator, batch, steps, device, needed=draws_needed(settings),
                              teacher_draw=settings.strategy == "skd")

    rows = torch.arange(batch, device=device)  # original row of each compute row
    mask = prompt_mask
    with section("student"):
        q = student_decoder(prompt_ids, mask) if student_decoder is not None else None
    with section("teacher"):
        p = teacher_decoder(prompt_ids, mask) if teacher_decoder is not None else None
    out = Responses(settings, batch, (q if q is not None else p).shape[-1], device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    used = 0
    for t in range(steps):
        with section("select"):
            # Every compute row is written at step t; finished rows get the padding values.
            jsd = gate_divergence(p, q, settings.temperature) if gate else None
            u = uniforms[rows, t]
            starts = torch.full_like(rows, t)
            use_teacher = choose_sources(settings, out, rows, starts, jsd[:, None] if jsd is not None else None,
                                         taus[t], u[:, None, COMPONENT_DRAW])[:, 0]
            step_tokens, step_lp, use_teacher = select_tokens(q, p, use_teacher, u, settings, warp)
            step_tokens = out.write(rows, t, active=~finished, tokens=step_tokens, use_teacher=use_teacher, jsd=jsd,
                                    sampling_lp=step_lp, q=q, p=p)
            finished = finished | torch.isin(step_tokens, stop_ids)
            used = t + 1
            running = int((~finished).sum())
            if running == 0 or t == steps - 1:
                break
            if running <= COMPACT_FRACTION * rows.shape[0]:
                keep = (~finished).nonzero().flatten()
                rows, mask, step_tokens, finished = rows[keep], mask[keep], step_tokens[keep], finished[keep]
                for decoder in decoders:
                    decoder.keep_rows(keep)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        with section("student"):
            q = student_decoder(step_tokens[:, None], mask) if student_decoder is not None else None
        with section("teacher"):
            p = teacher_decoder(step_tokens[:, None], mask) if teacher_decoder is not None else None
    return out.batch(prompt_ids, prompt_mask, taus, used)
