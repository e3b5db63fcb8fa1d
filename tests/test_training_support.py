"""Shared builders for the training tests (no tests here): tiny tokenizer, models, examples and jobs.

Everything is deterministic: the embedded suite with a fixed seed, a byte-level BPE trained on it, tiny Llama
models with fixed initialisation seeds. Prompts are short ("instruction / input =>") so steps stay fast on 2 cores.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from switch_core.config import EvalConfig, MethodConfig, OptimConfig, RolloutConfig, _default_methods
from switch_core.data import generate_embedded_suite, tokenize_example
from switch_core.data.tokenize import TrainExample
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm
from switch_core.training import DevData, TrainJob

MAX_PROMPT = 32
MAX_LENGTH = 56


def short_prompt(record: Any) -> str:
    return f"{record.instruction}\n{record.input}\n=>"


@functools.lru_cache(maxsize=1)
def _records() -> tuple[Any, ...]:
    return tuple(generate_embedded_suite(48, seed=3))


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    return build_tokenizer([short_prompt(r) + r.reference for r in _records()], vocab_size=300)


def examples() -> list[TrainExample]:
    """48 tokenised examples (variable prompt and response lengths)."""
    tok = tokenizer()
    return [
        tokenize_example(r.id, short_prompt(r), r.reference, tok, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
        for r in _records()
    ]


def dev_data(rouge_prompts: int = 4) -> DevData:
    records = _records()[40:]
    return DevData(
        examples=examples()[40:], prompts=[short_prompt(r) for r in records[:rouge_prompts]],
        references=[r.references for r in records[:rouge_prompts]],
    )


def student(seed: int = 1) -> torch.nn.Module:
    return tiny_causal_lm("llama", len(tokenizer()), hidden=32, layers=1, heads=2, seed=seed)


def teacher(sharpness: float = 3.0) -> torch.nn.Module:
    """A tiny random teacher whose next-token distributions are far from uniform (output weights scaled)."""
    model = tiny_causal_lm("llama", len(tokenizer()), hidden=64, layers=2, heads=4, seed=0)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpness)
    return model


def method(name: str, **changes: Any) -> MethodConfig:
    return _default_methods()[name].model_copy(update=changes)


def make_job(
    tmp_path: Path,
    method_config: MethodConfig,
    *,
    name: str = "run",
    train: list[TrainExample] | None = None,
    with_teacher: bool = True,
    rollout: dict[str, Any] | None = None,
    select_by: str = "loss",
    resume: bool = False,
    restart_if_incompatible: bool = False,
    **optim: Any,
) -> TrainJob:
    """A small job: 40 training examples, batch 8 (micro 4), lr 3e-3, 2 epochs unless overridden."""
    settings = {"lr": 3e-3, "batch_size": 8, "micro_batch_size": 4, "epochs": 2, "log_every": 1, "warmup_steps": 0}
    settings.update(optim)
    rollout_settings = {"max_new_tokens": 12, "batch_size": 4, "calibration_prompts": 8, "tau0": 0.1}
    rollout_settings.update(rollout or {})
    return TrainJob(
        name=name, student=student(), tokenizer=tokenizer(), train=train if train is not None else examples()[:40],
        dev=dev_data(), optim=OptimConfig(**settings), method=method_config, output_dir=tmp_path / "models" / name,
        state_dir=tmp_path / "state" / name, select_by=select_by, teacher=teacher() if with_teacher else None,
        rollout=RolloutConfig(**rollout_settings), generation=EvalConfig(max_new_tokens=8, batch_size=4),
        max_prompt_length=MAX_PROMPT, resume=resume,
        restart_if_incompatible=restart_if_incompatible,
    )
