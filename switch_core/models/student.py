"""Student construction: a layer-pruned copy of the teacher, or a fresh random model from a config.

(A student given by hub name or folder is loaded with `switch_core.models.loading.load_causal_lm`.)

Layer pruning keeps a subset of the teacher's decoder layers with their weights, plus the embeddings, final norm
and output head, as DistilBERT / "first-k layers" KD students do. The pruned model is rebuilt from a config with the
new layer count, so each attention module gets its new ``layer_idx`` (the KV cache is indexed by it in
transformers 5) and the result saves and loads with ``from_pretrained`` like any checkpoint.

Which layers to keep: evenly spaced (:func:`evenly_spaced_layers`) or those with the highest Block Influence
(:func:`block_influence`, :func:`top_influence_layers`; ShortGPT, Men et al. 2024).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Callable, Sequence
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


def block_influence(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 8
) -> torch.Tensor:
    """Block Influence of every decoder layer of ``model`` on a batch of token sequences.

    ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
    arXiv:2403.03853, eq. 1): ``BI_i = 1 - E_t[cos(x_{i,t}, x_{i+1,t})]`` with ``x_i`` the hidden state entering
    layer ``i`` and ``x_{i+1}`` the one leaving it, the expectation over every real token ``t`` of every row (rows
    weighted by their token count; positions where ``attention_mask`` is 0 are left out). A layer that barely turns
    its input (BI near 0) is the least needed one. The states are taken from forward hooks on the layers
    themselves, so the last layer's output is its raw output, before the model's final norm (which
    ``output_hidden_states`` would give instead).

    The forwards run in ``model``'s dtype (float32 for the teacher ``build-student`` loads) without gradients, in eval
    mode (the model's train/eval mode is restored afterwards), ``batch_size`` rows at a time; the cosines and their
    mean are float64. The result does not depend on how the rows are padded or batched beyond rounding.

    Args:
        model: a causal LM of an architecture :func:`prune_layers` supports.
        input_ids: ``[B, T]`` ``torch.long`` token ids, right- or left-padded.
        attention_mask: ``[B, T]``, 1 on real tokens, 0 on padding; at least one real token in all.
        batch_size: rows per forward pass (>= 1).

    Returns:
        ``[L]`` float64 tensor on the CPU, ``L`` the number of decoder layers, each value in [0, 2].

    Raises:
        StudentConfigError: unsupported architecture, mismatched shapes, no real token, or ``batch_size < 1``.
    """
    _, layers = _layer_container(model)
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise StudentConfigError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be "
            "[batch, length]"
        )
    if batch_size < 1:
        raise StudentConfigError(f"batch_size={batch_size} must be >= 1")
    tokens = int(attention_mask.sum())
    if tokens == 0:
        raise StudentConfigError("block influence needs at least one real token (attention_mask is all 0)")
    similarity = torch.zeros(len(layers), dtype=torch.float64)
    real: list[torch.Tensor] = []  # the current batch's [b, T] bool mask, read by the hooks

    def hook(index: int) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            del module
            entering = args[0] if args else kwargs["hidden_states"]
            leaving = output[0] if isinstance(output, tuple) else output
            cosine = nn.functional.cosine_similarity(entering.double(), leaving.double(), dim=-1)
            similarity[index] += cosine[real[0]].sum().cpu()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start : start + batch_size].to(device)
                mask = attention_mask[start : start + batch_size].to(device)
                real[:] = [mask.bool()]
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return 1.0 - similarity / tokens


def top_influence_layers(influence: torch.Tensor | Sequence[float], keep: int) -> list[int]:
    """The ``keep`` layers with the highest Block Influence (:func:`block_influence`), in increasing index order.

    Ties go to the lower index, so the choice is deterministic.

    Args:
        influence: ``[L]`` Block Influence per layer.
        keep: layers to keep, ``1 <= keep <= L``.

    Returns:
        Sorted distinct layer indices.

    Raises:
        StudentConfigError: ``keep`` out of range.
    """
    values = [float(v) for v in influence]
    if not 1 <= keep <= len(values):
        raise StudentConfigError(
            f"keep={keep} layers by block influence out of {len(values)} is impossible: use 1 <= keep <= {len(values)}"
        )
    ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(ranked[:keep])


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
