"""Tokenisation for training and generation: prompt-masked labels with EOS kept, right/left padding, label shift.

Layout of one training example (docs/METHOD.md §5.2-5.3, §A.5)::

    input_ids = prompt part                    + response_ids[:budget] + [eos]
    labels    = [-100] * len(prompt part)      + response_ids[:budget] + [eos]
    budget    = max_length - len(prompt part) - 1        (so the whole example is <= max_length tokens)

The prompt part is the whole prompt when it fits ``max_prompt_length``; a longer prompt is cut inside its text (the
instruction/input) and keeps the format's end, e.g. MiniLLM's ``### Response:`` line (:func:`encode_prompt`).

Labels are aligned with ``input_ids`` (Hugging Face convention); the shift-by-one happens once, in
:func:`shift_labels`. EOS is a label even when ``pad_token_id == eos_token_id``: padding is masked by position in
:func:`collate_train`, never by comparing ids with the pad id (docs/METHOD.md §A.5). Token ids are Python
``int`` / ``torch.long``, never a narrow dtype (METHOD.md §A.5). An example whose prompt or response would be empty is
an :class:`EmptyExampleError` naming the record id, never a silent empty example (docs/METHOD.md §A.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from switch_core.data.prompts import MINILLM_INPUT_MARKER, MINILLM_INSTRUCTION_MARKER, format_prompt, prompt_ends
from switch_core.data.records import InstructionRecord

if TYPE_CHECKING:
    from switch_core.config import DataConfig

IGNORE_INDEX = -100
"""Label value ignored by the loss (``torch.nn.functional.cross_entropy(ignore_index=-100)``)."""


class EmptyExampleError(ValueError):
    """Truncation or empty text leaves a prompt or response with no tokens; ``record_id`` names the example."""

    def __init__(self, message: str, *, record_id: str | None = None) -> None:
        super().__init__(message)
        self.record_id = record_id


@dataclass(frozen=True)
class TrainExample:
    """One tokenised training example.

    Attributes:
        id: record id.
        input_ids: prompt + response + EOS token ids, length ``<= max_length``.
        labels: same length; ``-100`` on the prompt, the response ids and EOS after it.
        prompt_length: number of prompt tokens (the ``-100`` head of ``labels``).
        response_truncated: True if response tokens were cut to fit ``max_length``.
        prompt_truncated: True if the prompt was cut to fit ``max_prompt_length`` (:func:`encode_prompt`).
    """

    id: str
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    response_truncated: bool = False
    prompt_truncated: bool = False

    @property
    def prompt_ids(self) -> list[int]:
        """The prompt token ids (input to rollouts / generation)."""
        return self.input_ids[: self.prompt_length]

    @property
    def response_ids(self) -> list[int]:
        """Response token ids including the final EOS."""
        return self.input_ids[self.prompt_length :]


def _name(record_id: str | None) -> str:
    return f"example {record_id!r}" if record_id is not None else "example"


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenised prompt.

    Attributes:
        ids: token ids, ``1..max_prompt_length`` of them.
        truncated: True if the prompt was longer than ``max_prompt_length`` tokens and was cut.
    """

    ids: list[int]
    truncated: bool


def encode_prompt(
    prompt: str, tokenizer: Any, *, max_prompt_length: int, record_id: str | None = None
) -> EncodedPrompt:
    """Token ids of a prompt, at most ``max_prompt_length`` of them, the format's end kept.

    A prompt that fits is encoded whole. A longer one is cut inside its text and keeps its end: when the prompt ends
    with one of :func:`~switch_core.data.prompts.prompt_ends` (MiniLLM's ``\\n\\n### Response:\\n``, the chat
    template's end of turn and assistant header), the end is kept whole, so the model is still asked to answer, and
    the text before it keeps its first tokens. In the MiniLLM template with input, the template's text (preamble,
    ``### Instruction:`` and ``### Input:`` headers) is kept whole and the instruction and the input each keep their
    head: the shorter one whole if it fits in half the room, the other the rest (:func:`_shares`). A prompt with no
    known end keeps its head (MiniLLM, docs/METHOD.md §5.3).

    The prompt is encoded with ``add_special_tokens=True`` (BOS when the tokenizer adds one) unless the text already
    starts with the tokenizer's BOS string (chat templates that render BOS themselves), so BOS is never doubled.

    Args:
        prompt: prompt text.
        tokenizer: Hugging Face tokenizer.
        max_prompt_length: maximum number of prompt tokens, >= 1.
        record_id: id used in error messages.

    Raises:
        ValueError: ``max_prompt_length < 1``.
        EmptyExampleError: the prompt has no token other than special tokens (empty text, or truncation keeping
            only BOS), or the format's end alone takes ``max_prompt_length`` tokens.
    """
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (isinstance(bos, str) and bos and prompt.startswith(bos))
    special = set(tokenizer.all_special_ids)
    ids = [int(i) for i in tokenizer.encode(prompt, add_special_tokens=add_special)]
    truncated = len(ids) > max_prompt_length
    if truncated:
        end = next((e for e in prompt_ends(tokenizer) if prompt.endswith(e) and len(e) < len(prompt)), "")
        tail = [int(i) for i in tokenizer.encode(end, add_special_tokens=False)] if end else []
        fixed, instruction, marker, input_text = _input_parts(prompt[: len(prompt) - len(end)]) if end else (
            "", prompt, "", "")
        texts = [instruction, input_text] if marker else [instruction]
        parts = [[int(i) for i in tokenizer.encode(t, add_special_tokens=add_special and not fixed and n == 0)]
                 for n, t in enumerate(texts)]
        head = [int(i) for i in tokenizer.encode(fixed, add_special_tokens=add_special)] if fixed else []
        between = [int(i) for i in tokenizer.encode(marker, add_special_tokens=False)] if marker else []
        room = max_prompt_length - len(head) - len(between) - len(tail)
        kept = [part[:n] for part, n in zip(parts, _shares([len(x) for x in parts], max(room, 0)), strict=True)]
        if room < len(parts) or all(i in special for i in head + kept[0]):
            raise EmptyExampleError(
                f"{_name(record_id)}: the prompt is empty after truncation to max_prompt_length={max_prompt_length}: "
                f"the prompt format's fixed text ({len(head) + len(between) + len(tail)} tokens, ending {end!r}) "
                "leaves no room for the instruction; raise data.max_prompt_length",
                record_id=record_id,
            )
        ids = head + kept[0] + between + (kept[1] if marker else []) + tail
    if all(i in special for i in ids):
        raise EmptyExampleError(
            f"{_name(record_id)}: the prompt is empty after tokenisation/truncation to max_prompt_length="
            f"{max_prompt_length} (prompt text {prompt[:60]!r}); fix the data or raise max_prompt_length",
            record_id=record_id,
        )
    return EncodedPrompt(ids=ids, truncated=truncated)


def _input_parts(body: str) -> tuple[str, str, str, str]:
    """``(fixed head, instruction, input header, input)`` of a prompt's text before its end: for the MiniLLM template
    with input, the preamble with the ``### Instruction:`` header, the instruction, the ``### Input:`` header and the
    input; for any other prompt ``("", body, "", "")``."""
    instruction_part, marker, input_text = body.rpartition(MINILLM_INPUT_MARKER)
    if not marker:
        return "", body, "", ""
    preamble, header, instruction = instruction_part.partition(MINILLM_INSTRUCTION_MARKER)
    return (preamble + header, instruction, marker, input_text) if header else ("", instruction_part, marker, input_text)


def _shares(lengths: list[int], room: int) -> list[int]:
    """Tokens each part keeps when all of them together may keep ``room`` (water-filling): a part shorter than an
    equal share of what is left is kept whole, the others share the rest, so a long instruction cannot push the input
    out, nor a long input the instruction. E.g. ``_shares([10, 100], 40) == [10, 30]``, ``_shares([50, 100], 41) ==
    [20, 21]``."""
    kept = [0] * len(lengths)
    left = room
    for rank, i in enumerate(sorted(range(len(lengths)), key=lambda i: lengths[i])):
        kept[i] = min(lengths[i], left // (len(lengths) - rank))
        left -= kept[i]
    return kept


def tokenize_prompt(prompt: str, tokenizer: Any, *, max_prompt_length: int, record_id: str | None = None) -> list[int]:
    """The token ids of :func:`encode_prompt` (for callers that do not count truncated prompts).

    Raises:
        ValueError, EmptyExampleError: see :func:`encode_prompt`.
    """
    return encode_prompt(prompt, tokenizer, max_prompt_length=max_prompt_length, record_id=record_id).ids


def count_truncated(examples: Sequence[TrainExample]) -> dict[str, int]:
    """``{"examples", "prompts_truncated", "responses_truncated"}``: how many examples were cut to fit
    ``max_prompt_length`` / ``max_length``."""
    return {
        "examples": len(examples),
        "prompts_truncated": sum(e.prompt_truncated for e in examples),
        "responses_truncated": sum(e.response_truncated for e in examples),
    }


def tokenize_example(
    record_id: str,
    prompt: str,
    response: str,
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
) -> TrainExample:
    """Tokenise one (prompt, response) pair for training (docs/METHOD.md §5.2-5.3).

    The prompt is tokenised by :func:`encode_prompt`; the response without special tokens, truncated so that
    ``prompt + response + EOS <= max_length``; EOS (``tokenizer.eos_token_id``) is appended and kept as a label.

    Args:
        record_id: id used in errors and stored in the example.
        prompt: prompt text (e.g. from :func:`switch_core.data.prompts.format_prompt`).
        response: reference response text, appended directly after the prompt.
        tokenizer: Hugging Face tokenizer with an EOS token.
        max_length: maximum total tokens (docs/METHOD.md §5.3: 512).
        max_prompt_length: maximum prompt tokens (docs/METHOD.md §5.3: 256).

    Returns:
        A :class:`TrainExample` (ids are Python ints).

    Raises:
        ValueError: ``max_length < 2`` or the tokenizer has no EOS token.
        EmptyExampleError: empty prompt (see :func:`encode_prompt`), empty response text, or no room left for a
            single response token after the prompt and EOS; the message names ``record_id``.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt token and EOS), got {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token (eos_token_id is None); set tokenizer.eos_token")
    encoded = encode_prompt(prompt, tokenizer, max_prompt_length=max_prompt_length, record_id=record_id)
    prompt_ids = encoded.ids
    response_ids = [int(i) for i in tokenizer.encode(response, add_special_tokens=False)]
    if not response_ids:
        raise EmptyExampleError(f"{_name(record_id)}: the response is empty", record_id=record_id)
    budget = max_length - len(prompt_ids) - 1
    if budget < 1:
        raise EmptyExampleError(
            f"{_name(record_id)}: no room for a response token: prompt has {len(prompt_ids)} tokens, "
            f"max_length={max_length} (needs prompt + >=1 response token + EOS); lower max_prompt_length "
            "or raise max_length",
            record_id=record_id,
        )
    kept = response_ids[:budget]
    return TrainExample(
        id=record_id,
        input_ids=prompt_ids + kept + [int(eos)],
        labels=[IGNORE_INDEX] * len(prompt_ids) + kept + [int(eos)],
        prompt_length=len(prompt_ids),
        response_truncated=len(kept) < len(response_ids),
        prompt_truncated=encoded.truncated,
    )


def tokenize_records(records: Sequence[InstructionRecord], tokenizer: Any, data: DataConfig) -> list[TrainExample]:
    """Tokenise records as training examples: each prompt formatted with ``data.prompt_format``, its first reference
    as the response (:func:`tokenize_example` with ``data.max_length`` and ``data.max_prompt_length``).

    Raises:
        EmptyExampleError: a record whose prompt or response is empty after truncation (the message names the record
            id).
    """
    return [
        tokenize_example(
            r.id, format_prompt(r, style=data.prompt_format, tokenizer=tokenizer), r.reference, tokenizer,
            max_length=data.max_length, max_prompt_length=data.max_prompt_length,
        )
        for r in records
    ]


def collate_train(examples: Sequence[TrainExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad training examples into a batch.

    Args:
        examples: non-empty sequence of :class:`TrainExample`.
        pad_token_id: id written into padded ``input_ids`` positions (may equal EOS; padding is masked by position).

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, each ``[B, L]`` ``torch.long`` with ``L`` the longest example;
        ``attention_mask`` is 1 on real tokens and 0 on padding; ``labels`` is ``-100`` on padding.

    Raises:
        ValueError: no examples.
    """
    if not examples:
        raise ValueError("collate_train needs at least one example")
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for batched generation (ARCHITECTURE.md: prompts are left-padded).

    Args:
        sequences: non-empty list of non-empty token-id lists.
        pad_token_id: id written into padded positions.

    Returns:
        ``(input_ids, attention_mask)``, both ``[B, L]`` ``torch.long``; each row ends with its sequence and the
        mask is 0 on the leading padding.

    Raises:
        ValueError: no sequences.
        EmptyExampleError: a sequence is empty (its row would be all padding).
    """
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            raise EmptyExampleError(f"left_pad: sequence {row} is empty")
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, length - len(seq) :] = torch.tensor([int(i) for i in seq], dtype=torch.long)
        attention_mask[row, length - len(seq) :] = 1
    return input_ids, attention_mask


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets for logits of the same length: ``out[:, t] = labels[:, t + 1]``, ``out[:, -1] = -100``.

    ``logits[:, t]`` (computed from tokens ``<= t``) predicts token ``t + 1``, so the loss is
    ``cross_entropy(logits.flatten(0, 1), shift_labels(labels).flatten(), ignore_index=-100)``. This is the single
    place the shift-by-one happens (ARCHITECTURE.md conventions).

    Args:
        labels: ``[B, L]`` integer labels aligned with ``input_ids`` (``-100`` where ignored).

    Returns:
        ``[B, L]`` tensor of the same dtype and device.

    Raises:
        ValueError: ``labels`` is not 2-D.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be [batch, length], got shape {tuple(labels.shape)}")
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted
