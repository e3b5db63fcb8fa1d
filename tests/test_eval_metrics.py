"""ROUGE-L, exact match, corpus BLEU and length buckets against hand-computed cases and naive references."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from switch_core.evaluation.metrics import (
    LengthBucket,
    MetricInputError,
    assign_bucket,
    corpus_bleu,
    exact_match,
    length_buckets,
    mean_and_sd,
    normalize_answer,
    rouge_l,
)


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _naive_rouge_l(pred: list[str], ref: list[str]) -> float:
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def test_rouge_l_hand_computed_pair():
    # LCS(the cat sat on the mat, the cat is on the mat) = "the cat on the mat" = 5 of 6 tokens each: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6, abs=1e-12)


def test_rouge_l_unequal_lengths():
    # pred 2 tokens, ref 4 tokens, LCS 2 ("a c"): P = 1, R = 1/2, F = 2/3
    assert rouge_l("a c", ["a b c d"]) == pytest.approx(2 / 3, abs=1e-12)


def test_rouge_l_takes_max_over_references():
    refs = ["x y z w", "the cat is on the mat", "cat"]
    # per reference: 0; 5/6; LCS 1 with P = 1/6, R = 1 -> F = 2/7
    assert rouge_l("the cat sat on the mat", refs) == pytest.approx(5 / 6, abs=1e-12)
    assert rouge_l("the cat sat on the mat", ["x y z w", "cat"]) == pytest.approx(2 / 7, abs=1e-12)


def test_rouge_l_empty_prediction_scores_zero():
    assert rouge_l("", ["the cat is on the mat"]) == 0.0
    assert rouge_l("   ", ["a", "b"]) == 0.0


def test_rouge_l_stems_lowercases_and_drops_punctuation():
    assert rouge_l("Running DOGS!", ["run dog"]) == pytest.approx(1.0)
    assert rouge_l("Hello, world.", ["hello world"]) == pytest.approx(1.0)


def test_rouge_l_matches_naive_lcs_on_random_sequences():
    rng = random.Random(0)
    vocab = ["ab", "cd", "ef", "gh", "ij", "kl"]  # <= 3 characters: the stemmer leaves them alone
    for _ in range(50):
        pred = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        refs = [[rng.choice(vocab) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 3))]
        expected = max(_naive_rouge_l(pred, ref) for ref in refs)
        assert rouge_l(" ".join(pred), [" ".join(r) for r in refs]) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_rejects_bad_references():
    with pytest.raises(MetricInputError, match="at least one reference"):
        rouge_l("a", [])
    with pytest.raises(MetricInputError, match="single string"):
        rouge_l("a", "a")


def test_exact_match_normalises_and_takes_any_reference():
    assert normalize_answer("  The  Cat, sat!\n") == "the cat sat"
    assert exact_match("The cat sat.", ["no", "the  cat sat"]) == 1.0
    assert exact_match("the cat", ["the cat sat"]) == 0.0
    assert exact_match("", ["a"]) == 0.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _naive_bleu(preds: list[str], refs_lists: list[list[str]]) -> float:
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for pred, refs in zip(preds, refs_lists):
        p = pred.split()
        rs = [r.split() for r in refs]
        hyp_len += len(p)
        ref_len += min((abs(len(r) - len(p)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            hyp = _ngrams(p, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in hyp.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    log_prec = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_prec)


def test_corpus_bleu_matches_naive_reference_with_variable_reference_counts():
    preds = ["the quick brown fox jumps over the lazy dog", "a b c d e f g", "one two three four five"]
    refs = [
        ["the quick brown fox jumped over the lazy dog", "a quick brown fox jumps over a lazy dog today"],
        ["a b c d e x g h"],
        ["one two three four six", "zero one two three four five", "one two"],
    ]
    assert corpus_bleu(preds, refs) == pytest.approx(_naive_bleu(preds, refs), abs=1e-9)
    assert corpus_bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(100.0)


def test_corpus_bleu_rejects_mismatched_lists():
    with pytest.raises(MetricInputError, match="2 predictions but 1"):
        corpus_bleu(["a", "b"], [["a"]])


def test_length_buckets_cover_every_length_once():
    buckets = length_buckets((5, 10, 20, 50))
    assert [b.label for b in buckets] == ["[0,5]", "[6,10]", "[11,20]", "[21,50]", "[51,inf)"]
    for length, label in [(0, "[0,5]"), (5, "[0,5]"), (6, "[6,10]"), (20, "[11,20]"), (21, "[21,50]"), (999, "[51,inf)")]:
        assert assign_bucket(length, buckets).label == label
    assert length_buckets(()) == (LengthBucket(0, None),)
    with pytest.raises(MetricInputError, match="strictly increasing"):
        length_buckets((5, 5))
    with pytest.raises(MetricInputError, match="none of the buckets"):
        assign_bucket(-1, buckets)


def test_mean_and_sd_is_sample_sd():
    mean, sd = mean_and_sd([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0
    assert sd == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3), abs=1e-12)
    assert mean_and_sd([7.5]) == (7.5, 0.0)
