"""Batched generation: seeding, left padding, the top-k gotcha, n-gram blocking, EOS post-processing."""
from __future__ import annotations

import pytest
import torch

from switch_core.data.tokenize import encode_prompt
from switch_core.evaluation.generate import (
    GenerationSettingsError,
    decode_response,
    generate_batch,
    generate_responses,
)
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm

CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "write a short answer to the question below",
    "numbers one two three four five six seven",
    "### Instruction:\nsay hello\n\n### Response:\nhello there",
] * 10
PROMPTS = ["the cat", "write a short answer to the question below please", "numbers one", "x", "### Response:\n"]
SAMPLING = {"max_prompt_length": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "no_repeat_ngram_size": 6}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm("llama", len(tokenizer), hidden=32, layers=2, heads=2, seed=0)


def test_same_seed_same_generations_and_different_seeds_differ(model, tokenizer):
    a = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2, seed=10, **SAMPLING)
    b = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2, seed=10, **SAMPLING)
    c = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2, seed=20, **SAMPLING)
    assert a == b
    assert len(a) == len(PROMPTS)
    assert sum(x != y for x, y in zip(a, c)) >= 3


def test_generation_leaves_the_callers_rng_and_the_model_mode_untouched(model, tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    evaluated = generate_responses(model, tokenizer, PROMPTS[:2], max_new_tokens=4, batch_size=2, seed=1, **SAMPLING)
    assert torch.equal(torch.rand(4), expected)
    model.train()
    try:
        in_training = generate_responses(model, tokenizer, PROMPTS[:2], max_new_tokens=4, batch_size=2, seed=1,
                                         **SAMPLING)
        assert model.training
    finally:
        model.eval()
    assert in_training == evaluated


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_left_padded_batches_match_one_prompt_at_a_time(arch, tokenizer):
    model = tiny_causal_lm(arch, len(tokenizer), hidden=32, layers=2, heads=2, seed=3)
    kwargs = {"max_new_tokens": 10, "greedy": True, "seed": 0, **SAMPLING}
    batched = generate_batch(model, tokenizer, PROMPTS, batch_size=len(PROMPTS), **kwargs)
    single = [generate_batch(model, tokenizer, [p], batch_size=1, **kwargs) for p in PROMPTS]
    assert batched.token_ids == [s.token_ids[0] for s in single]
    assert batched.texts == [s.texts[0] for s in single]
    assert batched.prompt_lengths == [len(tokenizer.encode(p)) for p in PROMPTS]


def _first_token_ranks(model, tokenizer, prompt: str, top_k: int, n: int = 64) -> list[int]:
    result = generate_batch(
        model, tokenizer, [prompt] * n, max_prompt_length=64, max_new_tokens=1, temperature=1.0, top_k=top_k,
        top_p=1.0, no_repeat_ngram_size=0, batch_size=n, seed=5,
    )
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode(prompt)])).logits[0, -1]
    order = torch.argsort(logits, descending=True).tolist()
    rank = {token: r for r, token in enumerate(order)}
    return [rank[ids[0]] for ids, stopped in zip(result.token_ids, result.stopped) if ids and not stopped]


def test_top_k_zero_samples_from_the_whole_vocabulary_even_if_the_checkpoint_says_otherwise(model, tokenizer):
    # transformers fills unset fields from model.generation_config and then applies top_k=50 (docs/METHOD.md §B.1); a
    # checkpoint default of top_k=5 must not leak in either. A near-uniform tiny model then samples tokens far
    # beyond rank 50.
    model.generation_config.top_k = 5
    try:
        ranks = _first_token_ranks(model, tokenizer, "the cat", top_k=0)
        assert max(ranks) >= 50
        limited = _first_token_ranks(model, tokenizer, "the cat", top_k=3)
        assert max(limited) < 3
        assert model.generation_config.top_k == 5  # restored after the call
    finally:
        model.generation_config.top_k = None


def _repeated_ngrams(ids: list[int], n: int, start: int) -> int:
    """How many n-grams ending at positions >= start occurred earlier in ids."""
    seen, repeats = set(), 0
    for end in range(n, len(ids) + 1):
        gram = tuple(ids[end - n : end])
        if end - 1 >= start and gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats


def test_no_repeat_ngram_size_blocks_repeats_over_prompt_and_response(tokenizer):
    model = tiny_causal_lm("gpt2", len(tokenizer), hidden=32, layers=1, heads=2, seed=7)
    prompt = "the cat sat on the mat"
    prompt_ids = tokenizer.encode(prompt)
    kwargs = {"max_prompt_length": 64, "max_new_tokens": 40, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
              "batch_size": 1, "seed": 0}
    free = generate_batch(model, tokenizer, [prompt], no_repeat_ngram_size=0, greedy=True, **kwargs)
    blocked = generate_batch(model, tokenizer, [prompt], no_repeat_ngram_size=2, greedy=True, **kwargs)
    # greedy decoding of a random model loops: without blocking bigrams repeat, with blocking never
    assert _repeated_ngrams(prompt_ids + free.token_ids[0], 2, len(prompt_ids)) > 0
    assert _repeated_ngrams(prompt_ids + blocked.token_ids[0], 2, len(prompt_ids)) == 0


def test_decode_response_cuts_at_first_eos_and_strips(tokenizer):
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode("  hello<n>world ") + [eos] + tokenizer.encode("after") + [eos, eos]
    text, kept, stopped = decode_response(ids, tokenizer, [eos])
    assert text == "hello\nworld"
    assert kept == tokenizer.encode("  hello<n>world ")
    assert stopped is True
    text, kept, stopped = decode_response(tokenizer.encode("no end"), tokenizer, [eos])
    assert (text, stopped) == ("no end", False)
    assert decode_response([eos], tokenizer, [eos]) == ("", [], True)


def test_counts_and_throughput_fields(model, tokenizer):
    result = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, seed=1, **SAMPLING)
    assert all(0 <= n <= 6 for n in result.response_lengths)
    assert result.response_lengths == [len(ids) for ids in result.token_ids]
    assert all(n == 6 for n, s in zip(result.response_lengths, result.stopped) if not s)
    assert result.generated_tokens == sum(result.response_lengths) + sum(result.stopped)
    assert result.seconds > 0 and result.tokens_per_second == pytest.approx(result.generated_tokens / result.seconds)


def test_long_prompts_keep_the_response_marker_and_are_counted(model, tokenizer):
    long = "### Instruction:\n" + "the cat sat on the mat " * 20 + "\n\n### Response:\n"
    settings = {**SAMPLING, "max_prompt_length": 24}
    result = generate_batch(model, tokenizer, [long, "the cat"], max_new_tokens=2, batch_size=2, seed=1, **settings)
    assert result.prompt_truncated == [True, False] and result.prompt_lengths[0] == 24
    marker = tokenizer.encode("\n\n### Response:\n", add_special_tokens=False)
    kept = encode_prompt(long, tokenizer, max_prompt_length=24).ids
    assert kept[-len(marker):] == marker


def test_bad_settings_are_rejected(model, tokenizer):
    with pytest.raises(GenerationSettingsError, match="top_p"):
        generate_responses(model, tokenizer, ["a"], max_new_tokens=2, batch_size=1, seed=0,
                           **{**SAMPLING, "top_p": 1.5})
    with pytest.raises(GenerationSettingsError, match="batch_size"):
        generate_responses(model, tokenizer, ["a"], max_new_tokens=2, batch_size=0, seed=0, **SAMPLING)
