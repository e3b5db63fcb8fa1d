"""Student construction: a layer-pruned copy of the teacher, or a fresh random model from a config.

(A student given by hub name or folder is loaded with `switch_core.models.loading.load_causal_lm`.)

Layer pruning keeps a subset of the teacher's decoder layers with their weights, plus the embeddings, final norm
and output head, as DistilBERT / "first-k layers" KD students do. The pruned model is rebuilt from a config with the
new layer count, so each attention module gets its new ``layer_idx`` (the KV cache is indexed by it in
transformers 5) and the result saves and loads with ``from_pretrained`` like any checkpoint.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

log = logging.getLogger(__name__)

# Dotted paths of the decoder-layer ModuleList: Llama-style (also Mistral, Qwen2, Gemma...), GPT-2, OPT.
LAYER_CONTAINERS: tuple[str, ...] = ("model.layers", "transformer.h", "model.decoder.layers")


class StudentConfigError(ValueError):
    """Bad layer selection or model config for a student."""


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter elements (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def evenly_spaced_layers(num_layers: int, keep: int) -> list[int]:
    """Indices of ``keep`` evenly spaced layers out of ``num_layers``, always including the first and the last.

    Index ``i`` of the result is ``round(i * (num_layers - 1) / (keep - 1))`` with halves rounded up, so the
    indices are strictly increasing (consecutive ideal positions are at least 1 apart). E.g. 30 layers, keep 6:
    ``[0, 6, 12, 17, 23, 29]``.

    Args:
        num_layers: layers in the teacher (>= 1).
        keep: layers to keep, ``2 <= keep <= num_layers`` (or 1 when ``num_layers`` is 1).

    Returns:
        Sorted distinct layer indices.

    Raises:
        StudentConfigError: ``keep`` out of range; the message says what to pass instead.
    """
    if num_layers < 1:
        raise StudentConfigError(f"num_layers={num_layers} must be >= 1")
    if keep == num_layers:
        return list(range(num_layers))
    if keep < 2 or keep > num_layers:
        raise StudentConfigError(
            f"keep={keep} evenly spaced layers out of {num_layers} is impossible: use 2 <= keep <= {num_layers} "
            "(first and last are always kept), or pass an explicit list of layer indices such as [0]"
        )
    return [(2 * i * (num_layers - 1) + (keep - 1)) // (2 * (keep - 1)) for i in range(keep)]


def _layer_container(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    for path in LAYER_CONTAINERS:
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return path, module
    raise StudentConfigError(
        f"cannot prune a {type(model).__name__}: no decoder layer list at any of {', '.join(LAYER_CONTAINERS)} "
        "(supported: Llama-style, GPT-2 and OPT models)"
    )


def _selected_layers(num_layers: int, keep: int | Sequence[int]) -> list[int]:
    if isinstance(keep, int):
        return evenly_spaced_layers(num_layers, keep)
    indices = list(keep)
    if not indices or not all(isinstance(i, int) for i in indices):
        raise StudentConfigError(f"keep={indices!r} must be a non-empty list of layer indices (integers)")
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise StudentConfigError(f"layer indices {bad} are out of range: the teacher has layers 0..{num_layers - 1}")
    if any(a >= b for a, b in itertools.pairwise(indices)):
        raise StudentConfigError(f"keep={indices} must be strictly increasing (no repeats, original order)")
    return indices


def prune_layers(model: PreTrainedModel, keep: int | Sequence[int]) -> PreTrainedModel:
    """A new model holding the selected decoder layers of ``model`` (weights copied); the input is untouched.

    Embeddings, position tables, the final norm and the output head are copied unchanged; the config's layer
    count (and ``layer_types``, when present) is updated and every attention module's ``layer_idx`` runs
    0..k-1, so generation with a KV cache works and ``save_pretrained`` / ``from_pretrained`` round-trip.
    Note: a GPT-2 config with ``scale_attn_by_inverse_layer_idx=True`` scales attention by the *new* index.

    Args:
        model: a Llama-style (``model.layers``), GPT-2 (``transformer.h``) or OPT (``model.decoder.layers``)
            causal LM.
        keep: an int = that many evenly spaced layers (`evenly_spaced_layers`), or strictly increasing indices.

    Returns:
        The pruned model, same class, dtype, device, train/eval mode and generation config as ``model``.

    Raises:
        StudentConfigError: unsupported architecture or bad ``keep``.
    """
    path, layers = _layer_container(model)
    indices = _selected_layers(len(layers), keep)
    config: PretrainedConfig = copy.deepcopy(model.config)
    config.num_hidden_layers = len(indices)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in indices]
    new_position = {old: new for new, old in enumerate(indices)}
    prefix = path + "."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            old, rest = key[len(prefix) :].split(".", 1)
            if int(old) not in new_position:
                continue
            key = f"{prefix}{new_position[int(old)]}.{rest}"
        state[key] = value
    pruned = type(model)(config)
    pruned.load_state_dict(state, strict=True)
    pruned.generation_config = copy.deepcopy(model.generation_config)
    pruned = pruned.to(device=model.device, dtype=model.dtype).train(model.training)
    log.info(
        "pruned student: layers %s of %d kept, %d parameters (teacher %d)",
        indices,
        len(layers),
        count_parameters(pruned),
        count_parameters(model),
    )
    return pruned


def _config_from_dict(values: dict[str, Any], origin: str) -> PretrainedConfig:
    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise StudentConfigError(f"{origin} has no 'model_type' (e.g. 'llama', 'gpt2', 'opt')")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as error:
        raise StudentConfigError(
            f"{origin}: model_type {model_type!r} is not a known transformers model: {error}"
        ) from error


def _load_config(config: str | Path | dict[str, Any]) -> PretrainedConfig:
    if isinstance(config, dict):
        return _config_from_dict(config, "the student config dict")
    path = Path(config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise StudentConfigError(f"student config {path} does not exist: give a config.json, its folder, or a dict")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StudentConfigError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from error
    if not isinstance(values, dict):
        raise StudentConfigError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return _config_from_dict(values, str(path))


def model_from_config(config: str | Path | dict[str, Any], *, seed: int = 0) -> PreTrainedModel:
    """A freshly, randomly initialised causal LM (float32, eval mode) built from a config.

    The global torch RNG is left as it was (initialisation runs under ``torch.random.fork_rng``).

    Args:
        config: a ``config.json`` path, a folder holding one, or a dict with ``model_type`` plus config fields
            (e.g. ``{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512}``;
            unspecified fields take the transformers defaults for that model type).
        seed: initialisation seed; the same seed gives the same weights.

    Returns:
        The model (an ``AutoModelForCausalLM`` class instance).

    Raises:
        StudentConfigError: missing file, bad JSON, no or unknown ``model_type``, or not a causal LM type.
    """
    model_config = _load_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(model_config)
        except ValueError as error:
            raise StudentConfigError(
                f"model_type {model_config.model_type!r} has no causal LM class: {error}"
            ) from error
    return model.eval()
