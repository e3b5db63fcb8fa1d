"""Atomic checkpoint folders: write to a temporary sibling, then rename (docs/ARCHITECTURE.md conventions).

A reader never sees a half-written checkpoint: a folder either does not exist yet or is complete.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from switch_core.atomic import atomic_write_json, follow_umask
from switch_core.models.lora import has_lora, merged_state_dict


def temporary_sibling(folder: Path, tag: str = "tmp") -> Path:
    """Return an unused path next to ``folder`` (same file system, so a rename is atomic).

    Args:
        folder: the final folder.
        tag: a word put in the name ("tmp" for a folder being written, "old" for one being replaced).

    Returns:
        ``folder.parent / ".{folder.name}.{tag}-{pid}-{random}"``; the path does not exist.
    """
    return folder.parent / f".{folder.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish_new_folder(tmp: Path, folder: Path) -> bool:
    """Rename a complete ``tmp`` folder to ``folder`` unless another writer published ``folder`` first.

    Safe when several processes race to create the same cache entry: the first rename wins, the others
    delete their own copy and use the winner's.

    Args:
        tmp: a complete folder, on the same file system as ``folder`` (see `temporary_sibling`).
        folder: the destination; must be absent or an empty folder.

    Returns:
        True when ``tmp`` became ``folder``; False when ``folder`` already existed with content (``tmp`` is removed).

    Raises:
        OSError: the rename failed for another reason than an existing non-empty destination.
    """
    try:
        os.rename(tmp, folder)
    except OSError:
        if folder.is_dir() and any(folder.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise
    return True


def replace_folder(tmp: Path, folder: Path) -> None:
    """Make the complete folder ``tmp`` take the place of ``folder``, which may exist already.

    The old folder is first renamed aside, then ``tmp`` is renamed to ``folder``, then the old one is deleted:
    at no moment does ``folder`` hold a mixture of old and new files.

    Args:
        tmp: a complete folder on the same file system as ``folder``.
        folder: the destination; an existing folder there is replaced.

    Raises:
        OSError: a rename failed (the old folder is put back when possible).
    """
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = temporary_sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def copy_checkpoint(source: Path, folder: Path) -> Path:
    """Copy the checkpoint folder ``source`` to ``folder`` atomically (an existing ``folder`` is replaced).

    Files are hard-linked when the file system allows it (no extra bytes on disk), else copied.

    Raises:
        FileNotFoundError: ``source`` is not a folder.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"checkpoint folder {source} does not exist")
    tmp = temporary_sibling(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp, copy_function=link_or_copy)
    replace_folder(tmp, folder)
    return folder


def plain_copy_of_gguf_model(model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as a plain model of the same class with the same (dequantized) weights.

    ``from_pretrained(..., gguf_file=...)`` dequantizes the GGUF tensors to float but keeps a ``quantization_config``
    in the config, and ``save_pretrained`` then refuses the model. The copy is built from ``config.to_dict()``
    without ``quantization_config`` and receives the state dict unchanged (docs/METHOD.md §B.2);
    its logits are identical.

    Args:
        model: a model returned by ``from_pretrained`` with a ``gguf_file``.

    Returns:
        A new model in eval mode, same dtype and device; the input is untouched.

    Raises:
        ValueError: the model carries no GGUF ``quantization_config`` (other quantizations cannot be undone this way).
    """
    config_dict = model.config.to_dict()
    quantization = config_dict.pop("quantization_config", None) or {}
    if quantization.get("quant_method") != "gguf":  # QuantizationMethod.GGUF is a str enum equal to "gguf"
        raise ValueError(f"expected a GGUF-loaded model, got quantization_config={quantization!r}")
    plain = type(model)(type(model.config).from_dict(config_dict))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(device=model.device, dtype=model.dtype).eval()


def save_pretrained_atomic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    folder: str | Path,
    *,
    state_dict: dict[str, Any] | None = None,
    records: dict[str, Any] | None = None,
) -> Path:
    """Save a model and its tokenizer with ``save_pretrained`` so the folder appears (or is replaced) atomically.

    The result loads by path with ``AutoModelForCausalLM.from_pretrained(folder)`` / ``AutoTokenizer``.
    Weights are written as safetensors in the model's current dtype. A model with LoRA adapters
    (:mod:`switch_core.models.lora`) is written with the adapters merged, as its plain class.

    Args:
        model: any transformers model (not a GGUF-loaded one: see `switch_core.models.loading.load_causal_lm`,
            which returns plain models).
        tokenizer: saved into the same folder; None saves the model only.
        folder: the checkpoint folder; created with its parents; an existing one is replaced.
        state_dict: the weights to write instead of ``model.state_dict()`` (the gathered full weights of a sharded
            model); None writes the model's own.

    Returns:
        The checkpoint folder as a Path.

    Raises:
        OSError: writing or renaming failed; the temporary folder is removed and ``folder`` is left as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    try:
        if has_lora(model):
            model.save_pretrained(tmp, state_dict=merged_state_dict(model))
        elif state_dict is not None:
            model.save_pretrained(tmp, state_dict=state_dict)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, value in (records or {}).items():
            atomic_write_json(tmp / name, value)
        follow_umask(tmp)  # safetensors writes its files owner-only
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
