"""The loss of a batch with bounded memory: full-vocabulary logits only for a chunk of response tokens at a time.

A causal LM's logits are ``output_head(last_hidden_state)``. Instead of materialising ``[B, L, V]`` logits for the
student and the teacher (8 × 256 × 49,152 floats = 400 MB per copy, several copies inside a divergence), the loss
takes the final hidden states of the response positions, ``[N, H]``, and walks over them in chunks of
``chunk_tokens``: each chunk projects to logits, computes the per-token loss (:mod:`switch_core.training.losses`) and,
when training, back-propagates it at once into the output head and into a detached copy of the hidden states.
One final backward call then carries the accumulated hidden-state gradient through the transformer. Peak memory is
one chunk of logits, and the output projection runs once forward and once backward (no recomputation). A student
wrapped by DDP or FSDP2 (``collective``, :mod:`.engine`) back-propagates the chunks into detached copies of the head's
weight and bias as well, so that the final call is the model's only backward call of the batch.

Normalisation (docs/METHOD.md §A.4): the per-token losses are *summed* and scaled by
``1 / N_global``, the number of response tokens in the whole global batch (all micro-batches of all processes), so
the accumulated gradient is the gradient of the token mean of the global batch, whatever the micro-batch split and
process count.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from operator import itemgetter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from switch_core.models.device import model_device
from switch_core.training.batches import TrainBatch
from switch_core.training.losses import LossSpec, token_loss_terms


class OutputHeadError(ValueError):
    """The model's logits are not ``output_head(base_model(...).last_hidden_state)`` (e.g. soft-capped logits)."""


def final_hidden_states(model: nn.Module, batch: TrainBatch) -> Tensor:
    """``[B, L, H]`` final hidden states (after the final norm) of a Hugging Face causal LM.

    Runs ``model.base_model`` (``model.model`` for Llama/OPT, ``model.transformer`` for GPT-2) with the batch's
    attention mask and position ids ``cumsum(mask) − 1`` and no KV cache.
    """
    out = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state


def check_output_head(model: nn.Module, batch: TrainBatch, *, atol: float = 1e-4) -> None:
    """Check that ``model.get_output_embeddings()(final_hidden_states)`` reproduces ``model(...).logits``.

    Run once before training on a small batch: an architecture that post-processes its logits (soft-capping,
    scaling) cannot use the chunked loss, and this says so instead of training on wrong logits.

    Raises:
        OutputHeadError: the two logits differ by more than ``atol`` (relative to their scale).
    """
    with torch.no_grad():
        reference = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            use_cache=False,
        ).logits.float()
        ours = model.get_output_embeddings()(final_hidden_states(model, batch)).float()
    scale = reference.abs().max().clamp_min(1.0)
    error = float((ours - reference).abs().max() / scale)
    if error > atol:
        raise OutputHeadError(
            f"{type(model).__name__}: logits are not output_head(last_hidden_state) (relative difference {error:.2e}); "
            "this architecture post-processes its logits, which the chunked loss does not support"
        )


def chunk_loss_terms(
    spec: LossSpec,
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    policy: Any,
    stop: Tensor | None,
    rows: slice,
) -> dict[str, Tensor]:
    """Per-token loss terms of the response tokens ``rows`` (``student_logits`` ``[n, V]`` are those rows' logits):
    :func:`~switch_core.training.losses.token_loss_terms` with the rows' policy values, plus the stop label's
    cross-entropy (term ``stop_ce``, added into ``loss``) when ``stop`` (``[N]`` float weights) is given."""
    values = None if policy is None else policy.map(itemgetter(rows))
    chunk_terms = token_loss_terms(spec, student_logits, targets[rows], teacher_logits, values)
    if stop is not None:  # supervise_stop: the stop label's cross-entropy on top of the method's loss
        ce = F.cross_entropy(student_logits.to(chunk_terms["loss"].dtype), targets[rows], reduction="none")
        chunk_terms["stop_ce"] = ce * stop[rows]
        chunk_terms["loss"] = chunk_terms["loss"] + chunk_terms["stop_ce"]
    return chunk_terms


def batch_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: TrainBatch,
    spec: LossSpec,
    *,
    chunk_tokens: int,
    scale: float | None = None,
    backward: Callable[[Tensor], None] | None = None,
    autocast: Callable[[], AbstractContextManager[None]] = nullcontext,
    terms: dict[str, Tensor] | None = None,
    hidden_states: Callable[[nn.Module, TrainBatch], Tensor] = final_hidden_states,
    collective: bool = False,
) -> Tensor:
    """Sum of the per-token losses over the batch's response tokens; optionally back-propagate ``scale ×`` it.

    Teacher logits come from ``batch.teacher_logits`` when the batch carries them (kept from a SWITCH rollout: the
    teacher's distributions on the same mixed prefix, docs/METHOD.md §1.3), else from a no-grad teacher forward. A batch
    with policy values (MiniLLM, ``batch.policy``) hands each position's values to the per-token loss. A batch with
    ``stop_labels`` (``supervise_stop``) adds the cross-entropy of those labels (term ``stop_ce``).

    Each chunk's scaled loss is back-propagated at once into a detached copy of the student's hidden states (and into
    the output head); one final backward call carries the hidden states' accumulated gradient through the model. With
    ``collective`` (a student wrapped by DDP or FSDP2, :mod:`.engine`) the head's weight and bias are detached copies
    too, so that final call is the model's only backward call, made even for a batch without response tokens.

    Args:
        student: the student (train or eval mode is the caller's choice).
        teacher: the frozen teacher; may be None when ``spec.needs_teacher`` is False or the batch carries logits.
        batch: the batch, on the student's device.
        spec: the per-token loss.
        chunk_tokens: response tokens per chunk of logits, >= 1.
        scale: multiplier of the summed loss before back-propagation (``1 / N_global``); required with ``backward``.
        backward: ``loss -> None`` that back-propagates a chunk's scaled loss (e.g. ``accelerator.backward``, which
            applies fp16 loss scaling); None = no gradients (evaluation; call under ``torch.no_grad``).
        autocast: context manager factory for the forward passes (e.g. ``accelerator.autocast``).
        terms: when given, the sums over the batch's tokens of the loss's named terms other than ``loss``
            (:func:`~switch_core.training.losses.token_loss_terms`: ``pg``, ``reg``, ``clipped`` for MiniLLM;
            ``stop_ce`` with ``stop_labels``) are added into it (0-dim float64 tensors, detached).
        hidden_states: ``(model, batch) -> [B, L, H]`` final hidden states of the student or the teacher (the engine
            runs the forward through the root module, so DDP's and FSDP's hooks run).
        collective: the student is wrapped by DDP or FSDP2, which need one student forward and one backward call
            per batch on every process: the loss runs even without response tokens (0 loss, zero gradients), and
            the head's weight and bias are detached copies too (above).

    Returns:
        0-dim float32 tensor (detached): the summed (unscaled) loss of the batch's response tokens.

    Raises:
        ValueError: ``backward`` without ``scale``, ``chunk_tokens < 1``, or a teacher needed but not given.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if backward is not None and scale is None:
        raise ValueError("batch_loss with backward needs scale (1 / response tokens of the global batch)")
    mask = batch.loss_mask
    targets = batch.labels[:, 1:][mask]
    total = torch.zeros((), dtype=torch.float32, device=batch.input_ids.device)
    if targets.numel() == 0 and not collective:
        return total
    policy = batch.packed_policy() if spec.policy_gradient else None
    needs_teacher = spec.uses_teacher(policy is not None)
    kept = batch.packed_teacher_logits() if needs_teacher else None
    stop = batch.packed_stop_labels()
    teacher_hidden = None
    if needs_teacher and kept is None:
        if teacher is None:
            raise ValueError(f"loss {spec.name!r} needs the teacher, but no teacher was given")
        device = model_device(teacher)
        with torch.no_grad(), autocast():
            teacher_hidden = hidden_states(teacher, batch.to(device))[:, :-1][mask.to(device)]
    with autocast():
        hidden = hidden_states(student, batch)[:, :-1][mask]  # [N, H]
    leaf = hidden.detach().requires_grad_(backward is not None)
    roots, leaves = [hidden], [leaf]  # the final backward carries the gradients added up in the leaves into the roots
    student_head = student.get_output_embeddings()
    if collective and backward is not None:
        # the head's parameters get detached copies too, and every leaf starts from zeros (the final backward runs
        # even without chunks)
        params = (student_head.weight, student_head.bias)
        weight, bias = (None if p is None else p.detach().requires_grad_(p.requires_grad) for p in params)
        for root, detached in zip(params, (weight, bias), strict=True):
            if detached is not None and detached.requires_grad:
                roots.append(root)
                leaves.append(detached)
        for detached in leaves:
            detached.grad = torch.zeros_like(detached)
        student_head = partial(F.linear, weight=weight, bias=bias)
    for start in range(0, targets.numel(), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        teacher_logits = None
        if kept is not None:
            teacher_logits = kept[rows]
        elif teacher_hidden is not None:
            with torch.no_grad(), autocast():
                teacher_logits = teacher.get_output_embeddings()(teacher_hidden[rows]).to(hidden.device)
        with autocast():
            student_logits = student_head(leaf[rows])
        chunk_terms = chunk_loss_terms(spec, student_logits, targets, teacher_logits, policy, stop, rows)
        chunk_sum = chunk_terms.pop("loss").sum()
        if terms is not None:
            for name, per_token in chunk_terms.items():
                terms[name] = terms.get(name, 0.0) + per_token.detach().sum().double()
        if backward is not None:
            backward(chunk_sum * scale)
        total = total + chunk_sum.detach().float()
    if backward is not None:
        torch.autograd.backward(roots, [detached.grad for detached in leaves])
    return total
