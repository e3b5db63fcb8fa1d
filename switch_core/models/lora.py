"""LoRA fine-tuning of the student (``student.lora``): adapters injected into the plain transformers model.

LoRA (Hu et al. 2021, arXiv 2106.09685) replaces a frozen weight ``W`` of a target module by ``W + (alpha / r)·B·A``
with ``A`` (r × in, Kaiming-uniform) and ``B`` (out × r, zeros) trained; dropout acts on the LoRA branch's input.
DistiLLM trains OpenLLaMA-2 this way (docs/METHOD.md §6.8: r 16, alpha 64, dropout 0.1, peft's default target modules,
``utils.py::get_model`` of jongwooko/distillm).

The adapters are injected with peft's ``inject_adapter_in_model``, which keeps the model the plain transformers class
(``model.base_model`` and ``model.get_output_embeddings()`` work as before, as the training objective needs) and
leaves ``requires_grad`` only on the adapter weights. Checkpoints are written with the adapters merged
(:func:`merged_state_dict`, used by :func:`switch_core.models.checkpoint.save_pretrained_atomic`), so every later
stage loads them with ``AutoModelForCausalLM.from_pretrained``. A run that starts from such a checkpoint injects
fresh adapters on top of the merged weights (DistiLLM instead reloads the init adapter and keeps training it; the
update the run can learn is a rank-r change of the same starting function either way).
"""
from __future__ import annotations

import warnings

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from switch_core.config import LoraConfig

_LORA_KEY_PREFIX = "lora_"


class LoraSetupError(ValueError):
    """LoRA adapters cannot be put on the model (no module matches ``student.lora.target_modules``...)."""


def _linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name parts of the model's linear-like modules (the candidates for ``target_modules``)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
    }
    return sorted(names)


def apply_lora(model: torch.nn.Module, settings: LoraConfig, *, seed: int) -> torch.nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze every other parameter.

    The update of a target module is ``(settings.alpha / settings.r)·B·A`` (Hu et al. 2021, eq. 3); ``B`` starts at
    zero, so the returned model computes exactly the logits of the input model until it is trained. GPT-2's
    ``Conv1D`` modules (stored transposed) are handled by peft's ``fan_in_fan_out``.

    Args:
        model: a transformers causal LM (any dtype/device; the adapters take the target modules' dtype and device).
        settings: ``student.lora`` (r, alpha, dropout, target_modules; None = peft's default for the architecture).
        seed: seeds the adapters' random initialisation (identical on every process; the global torch RNG is left
            as it was).

    Returns:
        The same model object, with adapters; only the adapter weights (``*.lora_A.*``, ``*.lora_B.*``) have
        ``requires_grad``.

    Raises:
        LoraSetupError: no module matches the target modules, or the architecture has no default target modules
            and none are given; the message lists the model's linear module names.
    """
    config = PeftLoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else None, bias="none",
    )
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2 Conv1D: peft sets it itself
            torch.manual_seed(seed)
            inject_adapter_in_model(config, model)
    except ValueError as err:
        raise LoraSetupError(
            f"student.lora.target_modules = {settings.target_modules}: cannot put LoRA adapters on "
            f"{type(model).__name__} ({err}); its linear modules are {', '.join(_linear_module_names(model))}"
        ) from None
    return model


def has_lora(model: object) -> bool:
    """Whether ``model`` is a torch module holding LoRA adapters (injected by :func:`apply_lora`)."""
    return isinstance(model, torch.nn.Module) and any(isinstance(m, LoraLayer) for m in model.modules())


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model that computes what the LoRA model computes: adapters merged, no LoRA keys.

    Each adapted module's weight becomes ``W + Σ_a (alpha_a / r_a)·B_a·A_a`` over its active adapters (peft's
    ``get_delta_weight``, already transposed for ``Conv1D``); its ``base_layer.`` key prefix is dropped and the
    ``lora_*`` tensors are left out. The model itself is not changed, so training continues unaffected.

    Args:
        model: a model with adapters (:func:`has_lora`).

    Returns:
        Key -> tensor with the keys of the model's plain class (what ``save_pretrained(state_dict=...)`` writes and
        ``from_pretrained`` reads); unadapted tensors are the model's own (no copy).
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if any(part.startswith(_LORA_KEY_PREFIX) for part in key.split(".")):
            continue
        merged[key.replace(".base_layer.", ".")] = value
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or module.merged:
                continue
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            merged[f"{name}.weight"] = (weight + delta).to(weight.dtype).detach()
    return merged
