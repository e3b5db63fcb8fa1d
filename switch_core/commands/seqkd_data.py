"""Generate the teacher's responses to the training prompts once, for SeqKD (METHOD.md §6.3): run_dir/seqkd/train.jsonl.

Sampling as the reference scripts' ``generate_data_seqkd.sh``: temperature 1, top-k 0 (off), top-p 1, prompts
truncated to ``data.max_prompt_length``, up to ``data.max_length − data.max_prompt_length`` new tokens, no n-gram
blocking (the samples are the teacher's own distribution), under the autocast of ``optim.mixed_precision`` (the
distillation runs' setting, as their rollouts). The file holds one record per training record (same id,
instruction and input; the teacher's response as the only reference), so every SeqKD run reuses it; with
``data.seqkd_limit: N`` only the first N training records are answered (a short SeqKD run sees no more). A run whose
inputs (training split, teacher weights, sampling settings, seed) did not change is skipped: ``seqkd/meta.json``
records their hashes; ``--force`` regenerates. Responses that come out empty are dropped (and counted in the meta).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from accelerate import PartialState
from tqdm.auto import tqdm

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.data.prompts import format_prompt
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import read_records, write_records
from switch_core.evaluation.generate import generate_batch
from switch_core.hashing import checkpoint_fingerprint, files_fingerprint
from switch_core.layout import RunLayout
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.processes import autocast, process_state
from switch_core.training.run_setup import require, teacher_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="regenerate even if the inputs did not change")


def sampling_settings(config: Config) -> dict[str, Any]:
    """Decoding settings of the SeqKD generations (docs/METHOD.md §6.3); ``mixed_precision`` only when it is not
    ``no`` (float32 data made before the setting existed keep their fingerprint and are not generated again)."""
    data = config.data
    settings = {
        "max_prompt_length": data.max_prompt_length, "max_new_tokens": data.max_length - data.max_prompt_length,
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "no_repeat_ngram_size": 0, "seed": config.seed,
        "prompt_format": data.prompt_format, "limit": data.seqkd_limit,
    }
    if config.optim.mixed_precision != "no":
        settings["mixed_precision"] = config.optim.mixed_precision
    return settings


def input_fingerprint(config: Config, layout: RunLayout) -> dict[str, Any]:
    """Hashes of what the SeqKD data depends on: training split, teacher weights, sampling settings."""
    teacher = teacher_dir(config, layout)
    return {
        "train": files_fingerprint([require(layout.split("train"), "prepare-data")]),
        "teacher": str(teacher), "teacher_checkpoint": checkpoint_fingerprint(teacher),
        "sampling": sampling_settings(config),
    }


def generate_seqkd_data(config: Config, layout: RunLayout, *, force: bool = False) -> Path:
    """Write ``layout.seqkd_data`` (unless up to date) and return its path.

    Raises:
        switch_core.training.run_setup.StageInputError: the teacher or the training split is missing.
        ValueError: every response came out empty.
    """
    out, meta_path = layout.seqkd_data, layout.seqkd_meta
    state = process_state()
    if state.is_main_process:
        fingerprint = input_fingerprint(config, layout)
        old = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        if force or not out.is_file() or old.get("inputs") != fingerprint:
            _generate(config, layout, out, meta_path, fingerprint, state)
        else:
            print(f"seqkd-data: {out} is up to date (inputs unchanged; --force regenerates)")
    state.wait_for_everyone()
    return out


def _generate(
    config: Config, layout: RunLayout, out: Path, meta_path: Path, fingerprint: dict[str, Any], state: PartialState
) -> None:
    settings = fingerprint["sampling"]
    records = read_records(layout.split("train"))[: config.data.seqkd_limit]
    folder = teacher_dir(config, layout)
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder, dtype=config.teacher.dtype, device=state.device)
    prompts = [format_prompt(r, style=config.data.prompt_format, tokenizer=tokenizer) for r in records]
    with (tqdm(total=len(prompts), desc="seqkd-data", disable=None) as bar,
          autocast(config.optim.mixed_precision, state.device)):
        result = generate_batch(
            teacher, tokenizer, prompts, max_prompt_length=settings["max_prompt_length"],
            max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"], top_k=settings["top_k"],
            top_p=settings["top_p"], no_repeat_ngram_size=settings["no_repeat_ngram_size"],
            batch_size=config.eval.batch_size, seed=settings["seed"], on_batch=bar.update,
        )
    kept = [
        InstructionRecord(id=r.id, instruction=r.instruction, references=(text,), input=r.input, category=r.category,
                          prompt=r.prompt)
        for r, text in zip(records, result.texts, strict=True) if text.strip()
    ]
    if not kept:
        raise ValueError(f"the teacher {folder} produced only empty responses; check the teacher checkpoint")
    write_records(kept, out)
    atomic_write_json(meta_path, {
        "inputs": fingerprint, "records": len(kept), "dropped_empty": len(records) - len(kept),
        "stopped_with_eos": sum(result.stopped), "generated_tokens": result.generated_tokens,
    })
    # the rate differs between re-runs: kept out of the (DVC-tracked) seqkd folder
    atomic_write_json(layout.timings(out.parent) / "timings.json", {
        "generated_tokens": result.generated_tokens, "tokens_per_second": round(result.tokens_per_second, 1),
    })
    print(f"seqkd-data: {len(kept)} teacher responses ({len(records) - len(kept)} empty dropped) -> {out}")


def run(args: argparse.Namespace) -> int:
    generate_seqkd_data(args.config, RunLayout.from_config(args.config, args.project_root), force=args.force)
    return 0
