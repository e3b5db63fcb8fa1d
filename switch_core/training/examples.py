"""Split files -> the tokenised examples and dev data a training run needs (docs/METHOD.md §5.2–5.3).

Each record's prompt is formatted with ``data.prompt_format`` and tokenised with its first reference as the response
(:func:`~switch_core.data.tokenize.tokenize_records`: a long prompt cut inside its text with the format's end kept,
response truncated to ``max_length``, EOS appended and kept as a label).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from switch_core.config import DataConfig
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.data.tokenize import TrainExample, count_truncated, tokenize_records
from switch_core.processes import is_main_rank
from switch_core.training import seeding
from switch_core.training.dev import DevData


def load_examples(path: Path, tokenizer: Any, data: DataConfig) -> list[TrainExample]:
    """Read a split file and tokenise it; say on stderr how many prompts were cut to ``data.max_prompt_length`` (on
    the main rank only, when several processes train).

    Raises:
        switch_core.data.records.DataFormatError: missing or malformed file.
        switch_core.data.tokenize.EmptyExampleError: see :func:`~switch_core.data.tokenize.tokenize_records`.
    """
    examples = tokenize_records(read_records(path), tokenizer, data)
    counts = count_truncated(examples)
    if counts["prompts_truncated"] and is_main_rank():
        print(f"data: {counts['prompts_truncated']} of {counts['examples']} prompts in {path.name} are longer than "
              f"data.max_prompt_length={data.max_prompt_length} tokens: cut inside the instruction/input, the "
              "prompt format's end kept", file=sys.stderr)
    return examples


def load_dev(path: Path, tokenizer: Any, data: DataConfig, *, rouge_examples: int, seed: int) -> DevData:
    """The dev split: all examples for dev loss, a seeded subset of ``rouge_examples`` prompts for dev ROUGE-L.

    The subset is drawn once from ``seed`` (the training seed), so every evaluation of a run scores the same prompts.

    Raises:
        switch_core.data.records.DataFormatError: missing or malformed file.
    """
    records = read_records(path)
    order = torch.randperm(len(records), generator=seeding.generator(seed, seeding.Stream.DEV_SUBSET)).tolist()
    subset = [records[i] for i in sorted(order[:rouge_examples])]
    return DevData(
        examples=tokenize_records(records, tokenizer, data),
        prompts=[format_prompt(r, style=data.prompt_format, tokenizer=tokenizer) for r in subset],
        references=[r.references for r in subset],
    )
