"""MiniLLM's optional pre-training LM term: a plain-text corpus and the per-step batch drawn from it (METHOD.md §6.5).

MiniLLM's total loss is ``rl_loss + lm_coef · pt_loss`` with ``pt_loss = (1 − kd_ratio)·CE + kd_ratio·FKL`` on a batch
of a pre-training corpus (OpenWebText for GPT-2), ``kd_ratio = 0.5`` (``minillm/losses.py::pt_loss``). Any text file
serves here: a ``.jsonl`` / ``.json`` file with a ``text`` field per row, or a ``.txt`` file with one document per
non-empty line, read with Hugging Face ``datasets``. Each document becomes a plain LM example: its tokens (no special
tokens), cut to ``max_length − 1``, then EOS; every token but the first is a label.

Batches go through the corpus in a seeded order without replacement, epoch after epoch: global position
``k·batch_size + i`` of step ``k`` is example ``perm_e[j]`` with ``(e, j) = divmod(position, len(corpus))`` and
``perm_e`` drawn from ``(seed, LM_CORPUS, e)``, so a resumed or multi-process run draws what a single uninterrupted
run draws.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from switch_core.data.tokenize import TrainExample
from switch_core.training import seeding
from switch_core.training.batches import TrainBatch, batch_from_examples
from switch_core.training.losses import LossSpec

PT_KD_RATIO = 0.5
"""MiniLLM ``--kd-ratio`` 0.5 of the pre-training loss (docs/METHOD.md §6.5)."""
PT_LOSS = LossSpec(name="fkl", kd_ratio=PT_KD_RATIO)
"""``pt_loss = 0.5·CE + 0.5·FKL`` per token of the pre-training batch."""
TEXT_FIELD = "text"
_READERS = {".jsonl": "json", ".json": "json", ".txt": "text"}


class LMCorpusError(ValueError):
    """The pre-training corpus file cannot be used; the message names the file (and the row) and the fix."""


def load_lm_corpus(path: Path, tokenizer: Any, *, max_length: int) -> list[TrainExample]:
    """Tokenise a pre-training text file into plain LM examples (module docstring).

    Args:
        path: ``.jsonl`` / ``.json`` (a ``text`` field per row) or ``.txt`` (one document per non-empty line).
        tokenizer: the run's Hugging Face tokenizer (needs an EOS token).
        max_length: tokens per example, >= 2 (the data's ``max_length``).

    Returns:
        Examples with ``prompt_length = 0`` and ``labels == input_ids``, in file order; ids ``<file>:<row>``.

    Raises:
        LMCorpusError: missing file, unknown suffix, unreadable file, no ``text`` field, a JSON row whose text is
            not a non-empty string, or no document at all.
        ValueError: ``max_length < 2`` or a tokenizer without EOS.
    """
    import datasets  # imported here: only runs with a pre-training term pay for it

    path = Path(path)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token (eos_token_id is None)")
    if not path.is_file():
        raise LMCorpusError(f"pre-training corpus {path} does not exist (methods.<method>.lm_data)")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise LMCorpusError(f"pre-training corpus {path}: use a .jsonl, .json or .txt file, not {path.suffix!r}")
    try:
        rows = datasets.load_dataset(reader, data_files=str(path), split="train")
    except Exception as err:  # datasets raises several builder-specific errors for malformed files
        raise LMCorpusError(f"pre-training corpus {path} cannot be read as {reader} ({err})") from err
    if TEXT_FIELD not in rows.column_names:
        raise LMCorpusError(f"pre-training corpus {path}: rows need a {TEXT_FIELD!r} field, found {rows.column_names}")
    examples = []
    for row, text in enumerate(rows[TEXT_FIELD], start=1):
        if reader == "text" and not str(text).strip():
            continue  # blank lines separate documents
        if not isinstance(text, str) or not text.strip():
            raise LMCorpusError(f"pre-training corpus {path}, row {row}: {TEXT_FIELD!r} must be a non-empty string")
        ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)][: max_length - 1]
        if not ids:
            raise LMCorpusError(f"pre-training corpus {path}, row {row}: the text has no tokens")
        ids.append(int(tokenizer.eos_token_id))
        examples.append(TrainExample(id=f"{path.name}:{row}", input_ids=ids, labels=list(ids), prompt_length=0))
    if not examples:
        raise LMCorpusError(f"pre-training corpus {path} holds no document")
    return examples


def lm_batch(
    corpus: list[TrainExample], *, seed: int, step: int, offset: int, count: int, global_count: int, pad_token_id: int
) -> TrainBatch:
    """This process's share of step ``step``'s pre-training batch (module docstring order).

    Args:
        corpus: the examples of :func:`load_lm_corpus` (non-empty).
        seed: training seed.
        step: 0-based optimizer step.
        offset: global index of this process's first sequence in the step's batch.
        count: sequences for this process.
        global_count: sequences per step over all processes.
        pad_token_id: pad id of the batch.

    Returns:
        A right-padded :class:`TrainBatch` of ``count`` examples (CPU).

    Raises:
        ValueError: an empty corpus or ``count < 1``.
    """
    if not corpus or count < 1:
        raise ValueError(f"lm_batch needs a non-empty corpus and count >= 1 (got {len(corpus)} examples, {count})")
    orders: dict[int, list[int]] = {}
    chosen = []
    for position in range(step * global_count + offset, step * global_count + offset + count):
        epoch, index = divmod(position, len(corpus))
        if epoch not in orders:
            gen = seeding.generator(seed, seeding.Stream.LM_CORPUS, epoch)
            orders[epoch] = torch.randperm(len(corpus), generator=gen).tolist()
        chosen.append(corpus[orders[epoch][index]])
    return batch_from_examples(chosen, pad_token_id)
