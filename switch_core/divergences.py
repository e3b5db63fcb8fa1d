"""Token-level divergences between the teacher's and the student's next-token distributions.

Notation (docs/METHOD.md §6): ``p`` is the teacher's next-token distribution, ``q`` the student's, both the softmax of
``logits / temperature`` over the last axis (the vocabulary). Every divergence takes
``(student_logits, teacher_logits, *, temperature, <beta | alpha>)`` with logits of shape ``[..., V]`` and returns the
per-position value ``[...]`` (vocabulary summed), in nats (natural log).

=================  ==============================================  ==========================================
name               definition                                      source
=================  ==============================================  ==========================================
``fkl``            KL(p ‖ q)                                       word-level KD, docs/METHOD.md §6.2
``rkl``            KL(q ‖ p)                                       MiniLLM single-step term, §6.5
``jsd``            β·KL(p ‖ m) + (1−β)·KL(q ‖ m), m = β·p + (1−β)·q  GKD generalised JSD, §6.6 (β = 0.5: the
                                                                   symmetric JSD of SWITCH's gate, §1.1)
``skl``            KL(p ‖ α·p + (1−α)·q)                           DistiLLM α-SKL, §6.7 (α = 0.1)
``srkl``           KL(q ‖ α·q + (1−α)·p)                           DistiLLM α-SRKL, §6.7 (α = 0.1)
``tvd``            ½·Σ_v |p_v − q_v|                               total variation distance
=================  ==============================================  ==========================================

Numerics (docs/METHOD.md §A.6):

- computed in float32, or float64 when either input is float64, whatever the input dtype (bf16/fp16 logits are
  upcast before the softmax);
- mixtures mix *probabilities*, never log-probabilities: every KL to a mixture is written as
  ``KL(a ‖ w·a + (1−w)·b) = −Σ_v a_v·f(d_v)`` with ``d = log b − log a`` and ``f(d) = log(w + (1−w)·e^d)``, evaluated
  as ``log1p((1−w)·(e^d − 1))`` (``f = d`` for ``w = 0``). So identical inputs give exactly 0, the endpoint weights
  ``w ∈ {0, 1}`` are exact (``w = 1`` gives exactly 0), and a tiny ``b`` does not underflow the mixture;
- ``0·log 0 = 0``: vocabulary entries with ``a_v = 0`` (logit ``−inf``, a masked vocabulary) contribute nothing and
  get finite (zero) gradients. An entry with ``a_v > 0`` where the mixture is 0 gives ``+inf`` (the divergence is
  infinite there);
- a position whose logits have no finite maximum (all ``−inf``: every token masked; or a NaN / ``+inf`` logit) has no
  distribution: the divergence there would be NaN, so it raises :class:`DivergenceError` naming the position (a check
  over the ``[...]`` result, not the vocabulary: one reduction and one host sync per call);
- results are clamped at 0 to remove negative rounding error only. In float32 the absolute accuracy is about 1e-7
  nats (the rounding of the two log-softmax normalisers); pass float64 logits to resolve smaller divergences.

For memory, :func:`chunked_token_divergence` evaluates any of these over positions in chunks and recomputes each
chunk in the backward pass, so no vocabulary-sized temporaries of the whole batch are kept for backward.
:func:`masked_token_mean` reduces per-position values with global-token normalisation (docs/METHOD.md §A.4).
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Divergence = Callable[..., Tensor]

_D_MAX = 80.0  # cap of log(b / a) inside exp (float32 overflows above 88.7)


class DivergenceError(ValueError):
    """Bad arguments to a divergence: unknown name or keyword, out-of-range β/α/temperature, mismatched logits."""


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise DivergenceError(f"{name}={value} is outside [0, 1]")
    return value


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Validate a logits pair and return ``(log q, log p)`` in float32 (float64 if either input is float64)."""
    if student_logits.shape != teacher_logits.shape:
        raise DivergenceError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape; teacher and student must share the vocabulary (same config.vocab_size, last axis) and positions"
        )
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise DivergenceError(f"logits must be floating point, got {student_logits.dtype} and {teacher_logits.dtype}")
    if student_logits.dim() == 0:
        raise DivergenceError("logits need a vocabulary axis (shape [..., V])")
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise DivergenceError(f"temperature={temperature} must be a positive finite number")
    wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    dtype = torch.float64 if wide else torch.float32

    def log_softmax(logits: Tensor) -> Tensor:
        logits = logits.to(dtype)
        if temperature != 1.0:
            logits = logits / temperature
        return torch.log_softmax(logits, dim=-1)

    return log_softmax(student_logits), log_softmax(teacher_logits)


def _logits_problem(row: Tensor) -> str | None:
    if bool(row.isnan().any()):
        return "hold NaN"
    if bool(torch.isneginf(row).all()):
        return "are all -inf"
    if bool(torch.isposinf(row).any()):
        return "hold +inf"
    return None


def _defined(values: Tensor, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``values`` (``[...]``), after checking that no position is NaN: one reduction over positions, none over the
    vocabulary (the logits are only looked at to explain an error).

    Raises:
        DivergenceError: a position is NaN; the message names the first one and the logits row that caused it.
    """
    nan = values.isnan()
    if not bool(nan.any()):
        return values
    index = tuple(int(i) for i in nan.nonzero()[0])
    causes = [
        f"the {who} logits there {problem}"
        for who, logits in (("student", student_logits), ("teacher", teacher_logits))
        if (problem := _logits_problem(logits[index])) is not None
    ]
    raise DivergenceError(
        f"the divergence is undefined (NaN) at position {list(index)}: {'; '.join(causes) or 'NaN arithmetic'}. "
        "A distribution needs at least one finite logit and no NaN or +inf: leave such positions out with the loss "
        "mask rather than masking every token"
    )


def _kl_to_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """``KL(a ‖ w·a + (1−w)·b)`` summed over the last axis, from log-probabilities ``[..., V]`` -> ``[...]``.

    Written as ``−Σ_v a_v·f(d_v)`` with ``d = log b − log a`` and ``f(d) = log(w + (1−w)·e^d)``: ``f = d`` for
    ``w = 0`` (plain KL), else ``log1p((1−w)·(e^d − 1))``, exactly 0 at ``d = 0`` and exactly 0 for ``w = 1``
    (``exp(d) − 1`` rather than ``expm1``: several times faster on CPU, exact at 0, absolute error ~eps near 0, which
    is the accuracy of the log-softmax inputs anyway). ``d`` is capped at ``_D_MAX`` inside the exponential (only
    entries with ``a < e^−80`` exceed it; they contribute < 1e−33). Entries with ``a = 0`` get ``d = 0``: they
    contribute ``0·f(0) = 0`` with zero, finite gradients.
    """
    a = log_a.exp()
    d = torch.where(a > 0, log_b - log_a, 0.0)
    f = d if weight == 0.0 else torch.log1p((1.0 - weight) * (d.clamp(max=_D_MAX).exp() - 1.0))
    return -(a * f).sum(dim=-1)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Forward KL, ``KL(p ‖ q) = Σ_v p_v·log(p_v / q_v)`` (word-level KD, docs/METHOD.md §6.2; Hinton et al. 2015).

    Args:
        student_logits: ``[..., V]`` student logits (any float dtype); gradients flow to it.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        temperature: softmax temperature applied to both, > 0.

    Returns:
        ``[...]`` float32 (float64 if an input is float64), >= 0, in nats; ``+inf`` where ``p_v > 0 = q_v``.

    Raises:
        DivergenceError: shapes differ (e.g. vocabulary sizes), non-float logits, or bad temperature; a position
            whose logits are all ``-inf`` or hold NaN / ``+inf`` (the divergence there is undefined).
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _defined(_kl_to_mixture(log_p, log_q, 0.0).clamp_min(0.0), student_logits, teacher_logits)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Reverse KL, ``KL(q ‖ p) = Σ_v q_v·log(q_v / p_v)`` (MiniLLM's single-step term, docs/METHOD.md §6.5).

    Args, returns and raises as :func:`forward_kl` (``+inf`` where ``q_v > 0 = p_v``).
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _defined(_kl_to_mixture(log_q, log_p, 0.0).clamp_min(0.0), student_logits, teacher_logits)


def jensen_shannon(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0, beta: float = 0.5
) -> Tensor:
    """Generalised Jensen-Shannon divergence ``β·KL(p ‖ m) + (1−β)·KL(q ‖ m)``, ``m = β·p + (1−β)·q``.

    β = 0.5 is the symmetric JSD of SWITCH's intervention test (docs/METHOD.md §1.1), bounded by ln 2 ≈ 0.693;
    β = 0.1 is the GKD setting of the DistiLLM code (docs/METHOD.md §6.6; TRL's β convention is different, see there).
    Both endpoints are exactly 0 for any inputs: β = 0 gives m = q and β = 1 gives m = p (the divergence degenerates;
    near them it is small, ≈ β·(1−β)·(...), which is why a clamped β = 1 silently disables distillation,
    docs/METHOD.md §A.6). A term with weight 0 is not evaluated, so it cannot turn an infinite KL into NaN.

    Args:
        student_logits: ``[..., V]`` student logits; gradients flow to it.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        temperature: softmax temperature applied to both, > 0.
        beta: weight of the teacher in the mixture, in [0, 1].

    Returns:
        ``[...]`` float32 (float64 if an input is float64), in ``[0, h(β)]`` nats where ``h`` is the binary entropy.

    Raises:
        DivergenceError: bad shapes, dtypes, temperature or β.
    """
    beta = _check_unit_interval("beta", beta)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    total = log_q.new_zeros(log_q.shape[:-1])
    if beta > 0.0:
        total = total + beta * _kl_to_mixture(log_p, log_q, beta)
    if beta < 1.0:
        total = total + (1.0 - beta) * _kl_to_mixture(log_q, log_p, 1.0 - beta)
    return _defined(total.clamp_min(0.0), student_logits, teacher_logits)


def skew_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0, alpha: float = 0.1
) -> Tensor:
    """α-skew KL ``KL(p ‖ α·p + (1−α)·q)`` (DistiLLM SKL, docs/METHOD.md §6.7; α = 0.1 in its scripts).

    α = 0 is :func:`forward_kl`; α = 1 is exactly 0. The DistiLLM code drops the constant teacher entropy; this is
    the full KL (same gradient).

    Args:
        student_logits: ``[..., V]`` student logits; gradients flow to it.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        temperature: softmax temperature applied to both, > 0.
        alpha: weight of the teacher in the skewed mixture, in [0, 1].

    Returns:
        ``[...]`` float32 (float64 if an input is float64), in ``[0, log(1/α)]`` nats.

    Raises:
        DivergenceError: bad shapes, dtypes, temperature or α.
    """
    alpha = _check_unit_interval("alpha", alpha)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _defined(_kl_to_mixture(log_p, log_q, alpha).clamp_min(0.0), student_logits, teacher_logits)


def skew_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0, alpha: float = 0.1
) -> Tensor:
    """α-skew reverse KL ``KL(q ‖ α·q + (1−α)·p)`` (DistiLLM SRKL, docs/METHOD.md §6.7; α = 0.1 in its scripts).

    α = 0 is :func:`reverse_kl`; α = 1 is exactly 0.

    Args:
        student_logits: ``[..., V]`` student logits; gradients flow to it.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        temperature: softmax temperature applied to both, > 0.
        alpha: weight of the student in the skewed mixture, in [0, 1].

    Returns:
        ``[...]`` float32 (float64 if an input is float64), in ``[0, log(1/α)]`` nats.

    Raises:
        DivergenceError: bad shapes, dtypes, temperature or α.
    """
    alpha = _check_unit_interval("alpha", alpha)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _defined(_kl_to_mixture(log_q, log_p, alpha).clamp_min(0.0), student_logits, teacher_logits)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Total variation distance ``½·Σ_v |p_v − q_v|``.

    Args, raises as :func:`forward_kl`. Returns ``[...]`` float32 (float64 if an input is float64) in [0, 1].
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _defined(0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1), student_logits, teacher_logits)


DIVERGENCES: dict[str, Divergence] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "jsd": jensen_shannon,
    "skl": skew_forward_kl,
    "srkl": skew_reverse_kl,
    "tvd": total_variation,
}
"""Registry of the token-level divergences by their short name."""


def get_divergence(name: str, **kwargs: float) -> Divergence:
    """The divergence called ``name`` with keyword parameters bound, e.g. ``get_divergence("jsd", beta=0.1)``.

    Args:
        name: a key of :data:`DIVERGENCES`.
        **kwargs: keyword parameters of that function (``temperature``; ``beta`` for jsd; ``alpha`` for skl/srkl).

    Returns:
        A callable ``(student_logits, teacher_logits) -> [...]`` tensor.

    Raises:
        DivergenceError: unknown name (lists the valid names), unknown keyword (lists the function's keywords), or
            an out-of-range value.
    """
    if name not in DIVERGENCES:
        raise DivergenceError(f"unknown divergence {name!r}: use one of {', '.join(DIVERGENCES)}")
    fn = DIVERGENCES[name]
    allowed = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise DivergenceError(f"divergence {name!r} takes no parameter {', '.join(unknown)}: valid are {allowed}")
    for key in ("beta", "alpha"):
        if key in kwargs:
            _check_unit_interval(key, kwargs[key])
    if "temperature" in kwargs and not float(kwargs["temperature"]) > 0:
        raise DivergenceError(f"temperature={kwargs['temperature']} must be > 0")
    return functools.partial(fn, **kwargs)


def chunked_token_divergence(
    divergence: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Evaluate a token-level divergence over positions in chunks, recomputing each chunk in the backward pass.

    A divergence on ``[N, V]`` logits creates several ``[N, V]`` float32 temporaries and keeps some for backward
    (8×256 positions × 49,152 vocabulary = 400 MB each). Here positions are split into chunks of ``chunk_size``;
    each chunk runs under activation checkpointing when gradients are needed, so the backward pass stores only the
    inputs (views of the given logits) and the peak extra memory is that of one chunk.

    Args:
        divergence: ``(student_logits, teacher_logits) -> [...]``, e.g. from :func:`get_divergence`.
        student_logits: ``[..., V]``; gradients flow to it.
        teacher_logits: ``[..., V]``, same shape.
        chunk_size: positions per chunk, >= 1.

    Returns:
        ``[...]`` per-position values, equal to ``divergence(student_logits, teacher_logits)``.

    Raises:
        DivergenceError: ``chunk_size < 1`` or shapes differ.
    """
    if chunk_size < 1:
        raise DivergenceError(f"chunk_size={chunk_size} must be >= 1")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() == 0:
        raise DivergenceError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must have "
            "the same shape [..., V]"
        )
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    students = torch.split(student_logits.reshape(-1, vocab), chunk_size)
    teachers = torch.split(teacher_logits.reshape(-1, vocab), chunk_size)
    recompute = torch.is_grad_enabled() and (student_logits.requires_grad or teacher_logits.requires_grad)
    values = [
        checkpoint(divergence, s, t, use_reentrant=False) if recompute else divergence(s, t)
        for s, t in zip(students, teachers)
    ]
    return torch.cat(values).reshape(lead)


def masked_token_mean(
    values: Tensor, mask: Tensor, *, num_items_in_batch: int | Tensor | None = None
) -> Tensor:
    """Sum of ``values`` over masked positions divided by the number of response tokens.

    With ``num_items_in_batch`` = the number of response tokens in the whole *global* batch (all gradient-accumulation
    micro-batches and all processes), summing the micro-batch results gives the loss of the full batch, whatever the
    micro-batch size or accumulation count (docs/METHOD.md §A.4; TRL PR #6006). Under DDP, which averages
    gradients over the N processes, multiply the result by N. Without it the divisor is ``mask.sum()`` (a plain
    per-batch token mean). Values at unmasked positions are ignored even when they are NaN or infinite.

    Args:
        values: ``[B, T]`` (or any shape) per-position values, e.g. a divergence.
        mask: same shape, bool or 0/1, True on response tokens that carry loss.
        num_items_in_batch: global token count, > 0; an int or a 0-dim tensor. None: use ``mask.sum()``.

    Returns:
        0-dim tensor in the dtype of ``values``; 0 when the mask is empty and no count is given.

    Raises:
        DivergenceError: shapes differ, or ``num_items_in_batch`` is a non-positive int.
    """
    if values.shape != mask.shape:
        raise DivergenceError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    if num_items_in_batch is None:
        return total / mask.sum().clamp_min(1)
    if isinstance(num_items_in_batch, int) and num_items_in_batch <= 0:
        raise DivergenceError(f"num_items_in_batch={num_items_in_batch} must be > 0 (response tokens in the batch)")
    return total / num_items_in_batch
