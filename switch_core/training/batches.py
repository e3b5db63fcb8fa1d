"""The one batch type the training loop consumes, built from ground-truth examples, rollouts or replayed sequences.

Every batch source (docs/METHOD.md §6) ends in a :class:`TrainBatch`: ``input_ids`` / ``attention_mask`` / ``labels``
aligned as in Hugging Face (labels ``-100`` where ignored, the generated or reference EOS kept as a label). The loss
shifts once: logits at position ``i`` predict token ``i + 1``, so the loss positions are ``labels[:, 1:] != -100``
over ``logits[:, :-1]`` (never DistiLLM's unshifted SGO mask, docs/METHOD.md §6.9 item 2).

A rollout batch may carry what its loss needs from rollout time for its last ``T`` tokens: the teacher's logits
(SWITCH, kept from the rollout) and MiniLLM's per-token policy-gradient values (:class:`PolicyTokens`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from switch_core.data.tokenize import IGNORE_INDEX, TrainExample, collate_train


@dataclass(frozen=True)
class PolicyTokens:
    """MiniLLM's per-token policy-gradient values, fixed at rollout time (docs/METHOD.md §6.5).

    All fields have one shape: ``[B, T]`` float32 for the last ``T`` tokens of a :class:`TrainBatch` (value
    ``[:, t]`` belongs to token ``input_ids[:, L - T + t]``, as ``TrainBatch.teacher_logits``), 0 where the token is
    not a response token; or ``[N]`` once packed to the loss positions (:meth:`TrainBatch.packed_policy`).

    Attributes:
        old_logprobs: log q_old(y_t), the student's (temperature 1) log-probability of the token at rollout time.
        teacher_logprobs: log p(y_t), the teacher's log-probability of the token.
        rewards: the scaled and clipped per-token reward (:func:`switch_core.training.policy_gradient.token_rewards`).
        advantages: whitened, length-normalised discounted returns (the PPO advantages).
        weights: importance weights q_old(y_t) / p̃(y_t) of the sampling distribution p̃ (1 for pure student sampling).
    """

    old_logprobs: torch.Tensor
    teacher_logprobs: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {name: tuple(getattr(self, name).shape) for name in self.names()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"PolicyTokens fields must share one shape, got {shapes}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in fields(cls))

    @property
    def shape(self) -> tuple[int, ...]:
        """The common shape of the fields."""
        return tuple(self.old_logprobs.shape)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PolicyTokens:
        """``fn`` applied to every field (slicing, masking, moving)."""
        return PolicyTokens(*(fn(getattr(self, name)) for name in self.names()))

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The fields by name (e.g. for a saved state)."""
        return {name: getattr(self, name) for name in self.names()}


@dataclass(frozen=True)
class TrainBatch:
    """A batch of sequences with the tokens the loss is taken on.

    Attributes:
        input_ids: ``[B, L]`` long token ids (prompt, response, padding on either side).
        attention_mask: ``[B, L]`` long, 1 on real tokens.
        labels: ``[B, L]`` long, aligned with ``input_ids``; the response tokens (EOS included), ``-100`` elsewhere.
        teacher_logits: optional ``[B, T, V]`` teacher next-token logits kept from a rollout, for the last ``T`` loss
            positions: ``teacher_logits[:, t]`` is the teacher's prediction of ``input_ids[:, L - T + t]``; None when
            the loss must run the teacher itself.
        policy: optional MiniLLM policy-gradient values of the last ``T`` tokens (``[B, T]`` fields, same alignment
            as ``teacher_logits``); None for every other method.
        stop_labels: optional ``[B, L]`` bool aligned with ``labels``: label positions whose token's cross-entropy
            is added to the loss (the stop labels of ``supervise_stop``, :mod:`switch_core.training.stop_tokens`);
            None = none.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    policy: PolicyTokens | None = None
    stop_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {tuple(self.input_ids.shape), tuple(self.attention_mask.shape), tuple(self.labels.shape)}
        if self.input_ids.dim() != 2 or len(shapes) != 1:
            raise ValueError(
                "input_ids, attention_mask and labels must share one [batch, length] shape, got "
                f"{tuple(self.input_ids.shape)}, {tuple(self.attention_mask.shape)}, {tuple(self.labels.shape)}"
            )
        if self.teacher_logits is not None:
            steps = self.teacher_logits.shape[1]
            if self.teacher_logits.dim() != 3 or self.teacher_logits.shape[0] != self.size or steps >= self.length:
                raise ValueError(
                    f"teacher_logits must be [batch={self.size}, T<{self.length}, vocab], "
                    f"got {tuple(self.teacher_logits.shape)}"
                )
            if self.loss_mask[:, : self.length - 1 - steps].any():
                raise ValueError("teacher_logits cover only the last positions, but earlier positions carry labels")
        if self.policy is not None:
            shape = self.policy.shape
            if len(shape) != 2 or shape[0] != self.size or shape[1] >= self.length:
                raise ValueError(f"policy values must be [batch={self.size}, T<{self.length}], got {shape}")
            if self.loss_mask[:, : self.length - 1 - shape[1]].any():
                raise ValueError("policy values cover only the last positions, but earlier positions carry labels")
        if self.stop_labels is not None:
            if tuple(self.stop_labels.shape) != tuple(self.labels.shape) or self.stop_labels.dtype != torch.bool:
                raise ValueError(f"stop_labels must be bool [{self.size}, {self.length}] like labels, got "
                                 f"{self.stop_labels.dtype} {tuple(self.stop_labels.shape)}")
            if (self.stop_labels & (self.labels == IGNORE_INDEX)).any():
                raise ValueError("stop_labels mark positions without a label")

    @property
    def size(self) -> int:
        """Number of sequences ``B``."""
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        """Padded length ``L``."""
        return int(self.input_ids.shape[1])

    @property
    def loss_mask(self) -> torch.Tensor:
        """``[B, L-1]`` bool: position ``i`` of ``logits[:, :-1]`` is trained to predict ``labels[:, i + 1]``."""
        return self.labels[:, 1:] != IGNORE_INDEX

    @property
    def num_loss_tokens(self) -> int:
        """Number of (shifted) response tokens the loss is taken on."""
        return int(self.loss_mask.sum())

    @property
    def position_ids(self) -> torch.Tensor:
        """``[B, L]`` long: ``cumsum(attention_mask) - 1`` clamped at 0 (left padding safe; ARCHITECTURE.md)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def packed_teacher_logits(self) -> torch.Tensor | None:
        """``[N, V]`` kept teacher logits of the loss positions, in the row-major order of ``loss_mask``; or None."""
        if self.teacher_logits is None:
            return None
        return self.teacher_logits[self.loss_mask[:, -self.teacher_logits.shape[1] :]]

    def packed_stop_labels(self) -> torch.Tensor | None:
        """``[N]`` bool :attr:`stop_labels` of the loss positions, in the row-major order of ``loss_mask``; or None."""
        return None if self.stop_labels is None else self.stop_labels[:, 1:][self.loss_mask]

    def with_stop_labels(self, stop_token_ids: Sequence[int]) -> TrainBatch:
        """The batch with :attr:`stop_labels` on every label that is a stop token (a rollout response holds one, at
        its end)."""
        stops = torch.tensor([int(i) for i in stop_token_ids], dtype=self.labels.dtype, device=self.labels.device)
        return replace(self, stop_labels=torch.isin(self.labels, stops))

    def packed_policy(self) -> PolicyTokens | None:
        """:class:`PolicyTokens` with ``[N]`` fields at the loss positions, in the row-major order of ``loss_mask``;
        or None."""
        if self.policy is None:
            return None
        mask = self.loss_mask[:, -self.policy.shape[1] :]
        return self.policy.map(lambda values: values[mask])

    def to(self, device: torch.device | str) -> TrainBatch:
        """The batch on ``device`` (kept teacher logits keep their dtype)."""
        move = {"device": device, "non_blocking": True}
        return TrainBatch(
            self.input_ids.to(**move),
            self.attention_mask.to(**move),
            self.labels.to(**move),
            None if self.teacher_logits is None else self.teacher_logits.to(**move),
            None if self.policy is None else self.policy.map(lambda values: values.to(**move)),
            None if self.stop_labels is None else self.stop_labels.to(**move),
        )

    def rows(self, start: int, stop: int) -> TrainBatch:
        """Sequences ``start:stop`` (a micro-batch)."""
        sl = slice(start, stop)
        kept = None if self.teacher_logits is None else self.teacher_logits[sl]
        policy = None if self.policy is None else self.policy.map(lambda values: values[sl])
        stop = None if self.stop_labels is None else self.stop_labels[sl]
        return replace(
            self, input_ids=self.input_ids[sl], attention_mask=self.attention_mask[sl], labels=self.labels[sl],
            teacher_logits=kept, policy=policy, stop_labels=stop,
        )

    def state_dict(self) -> dict[str, Any]:
        """The batch as a dict of CPU tensors (``torch.save``-able with ``weights_only`` loading)."""
        def cpu(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values.cpu()  # blocking: a non-blocking copy may not have landed

        return {
            "input_ids": cpu(self.input_ids), "attention_mask": cpu(self.attention_mask), "labels": cpu(self.labels),
            "teacher_logits": cpu(self.teacher_logits),
            "policy": None if self.policy is None else {k: cpu(v) for k, v in self.policy.to_dict().items()},
            "stop_labels": cpu(self.stop_labels),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainBatch:
        """The batch saved by :meth:`state_dict` (on the CPU).

        Raises:
            ValueError: inconsistent shapes (see the class invariants).
        """
        policy = None if state["policy"] is None else PolicyTokens(**state["policy"])
        return cls(
            state["input_ids"], state["attention_mask"], state["labels"], state["teacher_logits"], policy,
            state.get("stop_labels"),  # absent from states saved before it existed
        )

    def micro_batches(self, micro_batch_size: int) -> list[TrainBatch]:
        """Consecutive micro-batches of at most ``micro_batch_size`` sequences."""
        return [self.rows(i, min(i + micro_batch_size, self.size)) for i in range(0, self.size, micro_batch_size)]


def batch_from_examples(examples: Sequence[TrainExample], pad_token_id: int) -> TrainBatch:
    """Right-padded batch of tokenised ground-truth (or SeqKD) examples (:func:`switch_core.data.collate_train`)."""
    return TrainBatch(**collate_train(examples, pad_token_id))


@dataclass(frozen=True)
class Sequence1D:
    """One prompt + response pair as unpadded 1-D long tensors (the replay buffer's unit).

    Attributes:
        prompt_ids: ``[Lp]`` prompt tokens.
        response_ids: ``[T]`` response tokens, the EOS included when generation stopped.
    """

    prompt_ids: torch.Tensor
    response_ids: torch.Tensor


def batch_from_sequences(
    sequences: Sequence[Sequence1D], pad_token_id: int, teacher_logits: Sequence[torch.Tensor] | None = None
) -> TrainBatch:
    """Pack prompt/response pairs: prompts left-padded to a common length, responses right-padded.

    Layout of row ``b`` with ``Lp = max prompt length`` and ``T = max response length``::

        input_ids = [pad] * (Lp - |p_b|) + p_b + r_b + [pad] * (T - |r_b|)
        labels    = [-100] * Lp               + r_b + [-100] * (T - |r_b|)

    Args:
        sequences: non-empty list of :class:`Sequence1D`.
        pad_token_id: id written into padding (may equal EOS: padding is masked by position).
        teacher_logits: optional per-sequence ``[T_b, V]`` teacher next-token logits of the response tokens
            (``T_b >= |r_b|``; rows past ``|r_b|`` are ignored); packed into ``[B, T, V]`` zero-padded on the right.

    Returns:
        The :class:`TrainBatch` on the CPU device of the inputs.

    Raises:
        ValueError: no sequences, an empty prompt or response, or a teacher-logits count that does not match.
    """
    if not sequences:
        raise ValueError("batch_from_sequences needs at least one sequence")
    if any(s.prompt_ids.numel() == 0 or s.response_ids.numel() == 0 for s in sequences):
        raise ValueError("every sequence needs a non-empty prompt and a non-empty response")
    lp = max(int(s.prompt_ids.numel()) for s in sequences)
    steps = max(int(s.response_ids.numel()) for s in sequences)
    size = len(sequences)
    device = sequences[0].prompt_ids.device
    input_ids = torch.full((size, lp + steps), int(pad_token_id), dtype=torch.long, device=device)
    attention_mask = torch.zeros((size, lp + steps), dtype=torch.long, device=device)
    labels = torch.full((size, lp + steps), IGNORE_INDEX, dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        p, r = int(seq.prompt_ids.numel()), int(seq.response_ids.numel())
        input_ids[row, lp - p : lp] = seq.prompt_ids
        input_ids[row, lp : lp + r] = seq.response_ids
        attention_mask[row, lp - p : lp + r] = 1
        labels[row, lp : lp + r] = seq.response_ids
    kept = None
    if teacher_logits is not None:
        if len(teacher_logits) != size:
            raise ValueError(f"got {len(teacher_logits)} teacher-logit blocks for {size} sequences")
        first = teacher_logits[0]
        kept = first.new_zeros((size, steps, first.shape[-1]))
        for row, (seq, block) in enumerate(zip(sequences, teacher_logits, strict=True)):
            r = int(seq.response_ids.numel())
            if block.shape[0] < r:
                raise ValueError(f"sequence {row}: {block.shape[0]} teacher-logit rows for {r} response tokens")
            kept[row, :r] = block[:r]
    return TrainBatch(input_ids, attention_mask, labels, kept)
