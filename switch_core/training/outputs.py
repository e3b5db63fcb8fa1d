"""Where a run's checkpoints go: the best checkpoint so far is kept in the state folder, and the output folder is
published only when the run ends.

During a run the best checkpoint lives in ``state/<name>/best`` (replaced atomically at each improvement, resumed
with the rest of the state). When the run ends, ``models/<name>`` appears (or replaces an older one) in one rename,
complete: the checkpoint (hard links to the state's files where the file system allows) and ``train_summary.json``.
So a killed run never leaves a ``models/<name>`` that DVC or a later stage could take for a finished one; a fresh
(not resumed) run removes the previous ``models/<name>`` when it starts.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from switch_core.atomic import atomic_write_json
from switch_core.models.checkpoint import copy_checkpoint, replace_folder, save_pretrained_atomic, temporary_sibling
from switch_core.training.job import SUMMARY_FILE, TIMINGS_FILE, TrainResult

BEST_DIR = "best"
"""The best checkpoint so far, inside the state folder."""


def best_dir(state_dir: Path) -> Path:
    """``state_dir / BEST_DIR``."""
    return state_dir / BEST_DIR


def save_best(model: Any, tokenizer: Any, state_dir: Path, *, state_dict: dict[str, Any] | None = None) -> Path:
    """Write the new best checkpoint to ``state_dir/best`` atomically (``save_pretrained``; main process only);
    ``state_dict``: the gathered full weights of a sharded model (None: the model's own)."""
    return save_pretrained_atomic(model, tokenizer, best_dir(state_dir), state_dict=state_dict)


def remove_output(output_dir: Path) -> None:
    """Remove a previous run's published output (a fresh run starts; main process only)."""
    if output_dir.exists():
        shutil.rmtree(output_dir)


def publish(result: TrainResult, state_dir: Path) -> Path:
    """Publish the finished run: ``result.output_dir`` gets the best checkpoint and ``train_summary.json`` in one
    rename (an existing folder is replaced), and ``state_dir/timings.json`` the run's timings (main process only).

    The checkpoint comes from ``state_dir/best``; a state saved before that folder existed kept it in the output
    folder, which is then republished as it is. A run without any selected checkpoint publishes the summary alone.

    Returns:
        The output folder.

    Raises:
        OSError: copying or renaming failed (the previous output folder, if any, is left as it was).
    """
    output_dir = result.output_dir
    source = best_dir(state_dir)
    if not source.is_dir() and (output_dir / "config.json").is_file():
        source = output_dir
    tmp = temporary_sibling(output_dir)
    try:
        if source.is_dir():
            copy_checkpoint(source, tmp)
            (tmp / SUMMARY_FILE).unlink(missing_ok=True)
        atomic_write_json(tmp / SUMMARY_FILE, result.to_dict())
        replace_folder(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(state_dir / TIMINGS_FILE, result.timings())
    return output_dir
