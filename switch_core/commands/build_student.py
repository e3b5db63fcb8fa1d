"""Build the untrained student, run_dir/models/student-init, and check it is compatible with the teacher.

``student.init``: ``prune`` (a layer-pruned copy of teacher-base; ``keep_layers`` = a count of evenly spaced layers or
explicit indices), ``hf`` (any causal LM by name or folder), ``config`` (fresh random weights from a config folder or
json), ``tiny`` (a tiny random model on the teacher's tokenizer).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoConfig

from switch_core.config import Config
from switch_core.layout import RunLayout
from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.models.compat import check_compatible
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import count_parameters, model_from_config, prune_layers
from switch_core.models.tiny import tiny_causal_lm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the configuration's `student` section


def build_student(config: Config, layout: RunLayout) -> Path:
    """Write the student checkpoint to ``layout.model("student-init")`` and return its path.

    Raises:
        IncompatibleModelsError: the student's vocabulary or tokenizer differs from the teacher's.
        ModelLoadError: ``student.name_or_path`` cannot be loaded.
    """
    spec = config.student
    teacher_dir = layout.model("teacher-base")
    teacher = load_causal_lm(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    student_tokenizer = tokenizer
    if spec.init == "prune":
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
    out = save_pretrained_atomic(student, student_tokenizer, layout.model("student-init"))
    n_t, n_s = count_parameters(teacher), count_parameters(student)
    print(f"student: {type(student).__name__}, {n_s / 1e6:.2f}M parameters ({n_s / n_t:.0%} of the teacher) -> {out}")
    return out


def run(args: argparse.Namespace) -> int:
    build_student(args.config, RunLayout.from_config(args.config, args.project_root))
    return 0
