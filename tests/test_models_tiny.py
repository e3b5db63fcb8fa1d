"""Tiny tokenizer and tiny random models (switch_core.models.tiny)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from switch_core.models.tiny import (
    EOS_TOKEN,
    TinyModelError,
    build_tokenizer,
    tiny_causal_lm,
    write_tiny_checkpoint,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea.",
    "Summarise the following text in one sentence.",
    "Instruction: list three fruits. Response: apple, pear, plum.",
] * 5
ARCHS = ["gpt2", "opt", "llama"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=300)


def test_tokenizer_special_tokens_and_size(tokenizer):
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.bos_token_id == 0
    # GPT-2 convention: encoding adds no special token.
    assert 0 not in tokenizer("the fox").input_ids


def test_tokenizer_round_trips_any_text(tokenizer):
    text = "héllo wörld — 🤖 unseen words zyxq\nnew line"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    # BPE merges learnt from the corpus make frequent words shorter than their byte count.
    assert len(tokenizer("the quick brown fox").input_ids) < len(b"the quick brown fox")


def test_tokenizer_is_deterministic_and_saves(tokenizer, tmp_path):
    again = build_tokenizer(CORPUS, vocab_size=300)
    assert again.get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Write a poem about the lazy fox."
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (0, 0, 0)


def test_tokenizer_rejects_too_small_vocab():
    with pytest.raises(TinyModelError, match="vocab_size=200"):
        build_tokenizer(CORPUS, vocab_size=200)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_config_and_determinism(arch):
    rng_before = torch.random.get_rng_state()
    a = tiny_causal_lm(arch, 300, hidden=32, layers=2, heads=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the global RNG must be left untouched"
    b = tiny_causal_lm(arch, 300, hidden=32, layers=2, heads=4, seed=3)
    c = tiny_causal_lm(arch, 300, hidden=32, layers=2, heads=4, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training
    assert a.config.vocab_size == 300 and a.config.num_hidden_layers == 2
    assert (a.config.eos_token_id, a.config.pad_token_id, a.config.bos_token_id) == (0, 0, 0)
    assert a.generation_config.eos_token_id == 0
    assert a.get_output_embeddings().weight.shape == (300, 32)


def test_tiny_model_rejects_bad_arguments():
    with pytest.raises(TinyModelError, match="bert"):
        tiny_causal_lm("bert", 300)
    with pytest.raises(TinyModelError, match="divisible"):
        tiny_causal_lm("llama", 300, hidden=30, heads=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_write_tiny_checkpoint_loads_by_path(arch, tokenizer, tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", arch, tokenizer, hidden=32, layers=2, heads=4, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no temporary sibling may be left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = tiny_causal_lm(arch, len(tokenizer), hidden=32, layers=2, heads=4, seed=1)
    ids = torch.tensor([tokenizer("the quick brown fox").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
