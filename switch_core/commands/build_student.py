"""Build the untrained student, run_dir/models/student-init, and check it is compatible with the teacher.

``student.init``: ``prune`` (a layer-pruned copy of teacher-base; ``keep_layers`` = explicit indices, or a count of
layers chosen by ``layer_selection``: evenly spaced, or the highest Block Influence on the first ``selection_examples``
train examples, recorded in the checkpoint's ``layer_selection.json``), ``hf`` (any causal LM by name or folder), ``config`` (fresh random weights from a config folder or
json), ``tiny`` (a tiny random model on the teacher's tokenizer).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedModel

from switch_core.config import Config
from switch_core.data.splits import read_records
from switch_core.data.tokenize import collate_train, tokenize_records
from switch_core.layout import RunLayout
from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.models.compat import check_compatible
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import (
    block_influence,
    count_parameters,
    model_from_config,
    prune_layers,
    top_influence_layers,
)
from switch_core.models.tiny import tiny_causal_lm

SELECTION_RECORD = "layer_selection.json"
"""The file in ``models/student-init`` recording the Block Influence per teacher layer and the kept layers."""


def influence_selection(config: Config, layout: RunLayout, teacher: PreTrainedModel, tokenizer: Any) -> dict[str, Any]:
    """Block Influence of every teacher layer on the first ``student.selection_examples`` train examples (prompt and
    reference tokenised as for training, every real token counted) and the ``student.keep_layers`` layers it keeps.

    Returns:
        The record: ``layer_selection``, ``examples``, ``tokens``, ``block_influence`` (one float per teacher layer)
        and ``kept_layers`` (increasing indices).

    Raises:
        switch_core.data.records.DataFormatError: missing or malformed train split.
        StudentConfigError: ``keep_layers`` above the teacher's layer count.
    """
    spec = config.student
    records = read_records(layout.split("train"))[: spec.selection_examples]
    batch = collate_train(tokenize_records(records, tokenizer, config.data), tokenizer.pad_token_id)
    influence = block_influence(teacher, batch["input_ids"], batch["attention_mask"]).tolist()
    kept = top_influence_layers(influence, spec.keep_layers)
    return {"layer_selection": spec.layer_selection, "examples": len(records),
            "tokens": int(batch["attention_mask"].sum()), "block_influence": influence, "kept_layers": kept}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the configuration's `student` section


def build_student(config: Config, layout: RunLayout) -> Path:
    """Write the student checkpoint to ``layout.model("student-init")`` and return its path.

    With ``student.layer_selection = block_influence`` the chosen layers are printed and recorded in the checkpoint's
    :data:`SELECTION_RECORD` (:func:`influence_selection`).

    Raises:
        IncompatibleModelsError: the student's vocabulary or tokenizer differs from the teacher's.
        StudentConfigError: ``student.keep_layers`` does not fit the teacher.
        ModelLoadError: ``student.name_or_path`` cannot be loaded.
    """
    spec = config.student
    teacher_dir = layout.model("teacher-base")
    teacher = load_causal_lm(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    student_tokenizer = tokenizer
    records: dict[str, Any] = {}
    if spec.init == "prune" and spec.layer_selection == "block_influence":
        selection = influence_selection(config, layout, teacher, tokenizer)
        print("block influence per teacher layer (ShortGPT): "
              + ", ".join(f"{i}: {v:.4f}" for i, v in enumerate(selection["block_influence"])))
        print(f"kept layers (highest block influence, {selection['examples']} train examples, "
              f"{selection['tokens']} tokens): {selection['kept_layers']}")
        student = prune_layers(teacher, selection["kept_layers"])
        records[SELECTION_RECORD] = selection
    elif spec.init == "prune":
        student = prune_layers(teacher, spec.keep_layers)
    elif spec.init == "hf":
        student = load_causal_lm(spec.name_or_path)
        student_tokenizer = load_tokenizer(spec.name_or_path)
    elif spec.init == "config":
        base = AutoConfig.from_pretrained(spec.name_or_path).to_dict()
        student = model_from_config({**base, **spec.config_overrides}, seed=config.seed)
    else:
        student = tiny_causal_lm(
            spec.tiny.arch, teacher.config.vocab_size, hidden=spec.tiny.hidden, layers=spec.tiny.layers,
            heads=spec.tiny.heads, seed=spec.tiny.seed, max_positions=config.data.max_length,
            eos_token_id=tokenizer.eos_token_id,
        )
    check_compatible(teacher, student, tokenizer, student_tokenizer)
    out = save_pretrained_atomic(student, student_tokenizer, layout.model("student-init"), records=records)
    n_t, n_s = count_parameters(teacher), count_parameters(student)
    print(f"student: {type(student).__name__}, {n_s / 1e6:.2f}M parameters ({n_s / n_t:.0%} of the teacher) -> {out}")
    return out


def run(args: argparse.Namespace) -> int:
    build_student(args.config, RunLayout.from_config(args.config, args.project_root))
    return 0
