"""Instruction data: one record type, readers, the embedded suite, prompt templates, tokenisation and splits."""

from switch_core.data.embedded import (
    DEFAULT_SUITE_SIZE,
    EMBEDDED_FAMILIES,
    describe_embedded_suite,
    generate_embedded_suite,
)
from switch_core.data.prompts import (
    MINILLM_TEMPLATE_NO_INPUT,
    MINILLM_TEMPLATE_WITH_INPUT,
    PromptFormatError,
    PromptStyle,
    format_prompt,
    prompt_ends,
)
from switch_core.data.readers import (
    BadRowPolicy,
    BadRowReport,
    ReadResult,
    SourceKind,
    load_records,
    read_dolly_raw,
    read_hf_dataset,
    read_minillm_jsonl,
)
from switch_core.data.records import DataFormatError, InstructionRecord
from switch_core.data.splits import read_records, split_records, write_records, write_splits
from switch_core.data.tokenize import (
    IGNORE_INDEX,
    EmptyExampleError,
    EncodedPrompt,
    TrainExample,
    collate_train,
    count_truncated,
    encode_prompt,
    left_pad,
    shift_labels,
    tokenize_example,
    tokenize_prompt,
)

__all__ = [
    "DEFAULT_SUITE_SIZE",
    "EMBEDDED_FAMILIES",
    "IGNORE_INDEX",
    "MINILLM_TEMPLATE_NO_INPUT",
    "MINILLM_TEMPLATE_WITH_INPUT",
    "BadRowPolicy",
    "BadRowReport",
    "DataFormatError",
    "EmptyExampleError",
    "EncodedPrompt",
    "InstructionRecord",
    "PromptFormatError",
    "PromptStyle",
    "ReadResult",
    "SourceKind",
    "TrainExample",
    "collate_train",
    "count_truncated",
    "describe_embedded_suite",
    "encode_prompt",
    "format_prompt",
    "generate_embedded_suite",
    "left_pad",
    "load_records",
    "prompt_ends",
    "read_dolly_raw",
    "read_hf_dataset",
    "read_minillm_jsonl",
    "read_records",
    "shift_labels",
    "split_records",
    "tokenize_example",
    "tokenize_prompt",
    "write_records",
    "write_splits",
]
