"""Teacher/student compatibility check (switch_core.models.compat)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from switch_core.models.compat import IncompatibleModelsError, check_compatible
from switch_core.models.student import prune_layers
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm

CORPUS_A = ["the cat sat on the mat", "a dog ran in the park", "write a poem about the sea"] * 4
CORPUS_B = ["zebra quartz jukebox vexing", "fjord whisky klutz", "sphinx of black quartz judge my vow"] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS_A, vocab_size=280)


def test_identical_family_passes(tokenizer):
    teacher = tiny_causal_lm("llama", len(tokenizer), hidden=32, layers=3)
    student = prune_layers(teacher, [0, 2])
    check_compatible(teacher, student, tokenizer, tokenizer)
    check_compatible(teacher, student)


def test_config_vocab_larger_than_tokenizer_is_fine_when_both_agree(tokenizer):
    # Qwen-style: config.vocab_size (padded) > len(tokenizer).
    teacher = tiny_causal_lm("gpt2", len(tokenizer) + 40, hidden=32, layers=2)
    student = tiny_causal_lm("gpt2", len(tokenizer) + 40, hidden=32, layers=1, seed=1)
    check_compatible(teacher, student, tokenizer, tokenizer)


def test_vocab_size_mismatch_names_both_sizes_and_the_difference(tokenizer):
    teacher = tiny_causal_lm("opt", 300, hidden=32, layers=2)
    student = tiny_causal_lm("opt", 296, hidden=32, layers=1)
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(teacher, student, tokenizer, tokenizer)
    message = str(info.value)
    assert "config.vocab_size differs: teacher 300, student 296 (the teacher has 4 more)" in message
    assert "output embedding size differs: teacher 300, student 296" in message
    assert "resize_token_embeddings(300)" in message
    assert "Cross-tokenizer distillation is not supported" in message
    assert isinstance(info.value, ValueError)


def test_head_not_matching_its_own_config_is_reported(tokenizer):
    teacher = tiny_causal_lm("llama", 300, hidden=32, layers=2)
    student = tiny_causal_lm("llama", 300, hidden=32, layers=1)
    student.config.vocab_size = 310  # a config edited without resizing the embeddings
    with pytest.raises(IncompatibleModelsError, match="student's output embedding has 300 rows but its config"):
        check_compatible(teacher, student)


def test_tokenizer_mapping_mismatch_names_both_sizes():
    tok_a = build_tokenizer(CORPUS_A, vocab_size=280)
    tok_b = build_tokenizer(CORPUS_B, vocab_size=270)
    teacher = tiny_causal_lm("gpt2", 280, hidden=32, layers=2)
    student = tiny_causal_lm("gpt2", 280, hidden=32, layers=1)
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(teacher, student, tok_a, tok_b)
    message = str(info.value)
    assert "token -> id mappings differ" in message
    assert "tokenizer sizes: teacher 280, student 270" in message
    assert "tokens only in the teacher's" in message
    assert "a student of the teacher's family" in message


def test_same_tokens_with_different_ids_are_reported(tokenizer):
    other = build_tokenizer(CORPUS_A, vocab_size=280)
    vocab = other.get_vocab()
    # Swap the ids of two merged tokens in a copy of the backend's vocabulary.
    first, second = sorted(t for t, i in vocab.items() if i >= 257)[:2]
    data = json.loads(other.backend_tokenizer.to_str())
    data["model"]["vocab"][first], data["model"]["vocab"][second] = vocab[second], vocab[first]
    swapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=other.eos_token, pad_token=other.pad_token
    )
    model = tiny_causal_lm("gpt2", 280, hidden=32, layers=1)
    with pytest.raises(IncompatibleModelsError, match="2 tokens with different ids"):
        check_compatible(model, model, tokenizer, swapped)


def test_eos_mismatch_is_reported(tokenizer):
    other = build_tokenizer(CORPUS_A, vocab_size=280)
    other.eos_token = other.convert_ids_to_tokens(5)
    model = tiny_causal_lm("gpt2", 280, hidden=32, layers=1)
    with pytest.raises(IncompatibleModelsError, match=r"eos ids differ: teacher 0 .*student 5"):
        check_compatible(model, model, tokenizer, other)


def test_tokenizer_larger_than_models_is_reported(tokenizer):
    teacher = tiny_causal_lm("gpt2", 270, hidden=32, layers=2)
    student = tiny_causal_lm("gpt2", 270, hidden=32, layers=1)
    with pytest.raises(IncompatibleModelsError, match=r"ids up to 279 but the teacher's output has only 270 rows"):
        check_compatible(teacher, student, tokenizer)
