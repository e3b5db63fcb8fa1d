"""Text metrics of the evaluation protocol: ROUGE-L, exact match, corpus BLEU, and reference-length buckets.

ROUGE-L and exact match follow MiniLLM / DistiLLM ``rouge_metric.py`` (docs/METHOD.md §5.5): the ``rougeL`` F-measure of
``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`` called as ``score(target=reference,
prediction=prediction)``, the maximum over an example's references; exact match after SQuAD-style normalisation
(lower-case, punctuation removed, whitespace collapsed; articles are kept, as in that file). Per-example values are in
[0, 1]; the evaluation scales corpus means by 100. BLEU is sacrebleu's corpus BLEU (an extra metric, METHOD.md §A.7).
Length buckets implement the response-length analysis of docs/METHOD.md §2.
"""
from __future__ import annotations

import functools
import itertools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import sacrebleu
from rouge_score import rouge_scorer

DEFAULT_BUCKET_EDGES: tuple[int, ...] = (5, 10, 20, 50)
"""Upper bounds of the default reference-length buckets: [0,5], [6,10], [11,20], [21,50], [51,∞) tokens."""


class MetricInputError(ValueError):
    """Metric inputs that do not fit together: no references, lists of different lengths, bad bucket edges."""


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str):
        raise MetricInputError("references must be a sequence of strings, got a single string; wrap it in a list")
    if len(references) == 0:
        raise MetricInputError("references is empty: every example needs at least one reference")


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure of one prediction: the maximum over its references (docs/METHOD.md §5.5).

    Tokenisation is rouge-score's default (lower-case, runs of ``[a-z0-9]``, Porter stemming of tokens longer than
    3 characters); text without such characters (empty, or non-ASCII only) scores 0.

    Args:
        prediction: the model's response (already cut at EOS and stripped).
        references: one or more reference responses.

    Returns:
        A float in [0, 1]; 0 for an empty prediction.

    Raises:
        MetricInputError: ``references`` is empty or a bare string.
    """
    _check_references(references)
    scorer = _rouge_l_scorer()
    return max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in references)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, collapse whitespace (MiniLLM ``rouge_metric.py``; SQuAD without articles)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised reference, else 0.0 (docs/METHOD.md §5.5).

    Raises:
        MetricInputError: ``references`` is empty or a bare string.
    """
    _check_references(references)
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(ref) for ref in references))


def corpus_bleu(predictions: Sequence[str], references_lists: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (default 13a tokenizer, ``exp`` smoothing), allowing a different number of references
    per example.

    Args:
        predictions: one response per example.
        references_lists: for each example, its references (at least one).

    Returns:
        BLEU on sacrebleu's 0–100 scale.

    Raises:
        MetricInputError: the two lists differ in length, are empty, or an example has no reference.
    """
    if len(predictions) != len(references_lists):
        raise MetricInputError(
            f"corpus_bleu: {len(predictions)} predictions but {len(references_lists)} reference lists"
        )
    if not predictions:
        raise MetricInputError("corpus_bleu: no predictions")
    for refs in references_lists:
        _check_references(refs)
    width = max(len(refs) for refs in references_lists)
    # sacrebleu takes reference *streams*; None marks a missing reference for examples with fewer of them.
    streams = [[refs[i] if i < len(refs) else None for refs in references_lists] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


@dataclass(frozen=True)
class LengthBucket:
    """A closed range of reference lengths in tokens; ``high`` None means unbounded."""

    low: int
    high: int | None

    @property
    def label(self) -> str:
        """``"[6,10]"`` or ``"[51,inf)"``."""
        return f"[{self.low},{self.high}]" if self.high is not None else f"[{self.low},inf)"

    def contains(self, length: int) -> bool:
        """Whether ``low <= length <= high``."""
        return length >= self.low and (self.high is None or length <= self.high)


def length_buckets(edges: Sequence[int] = DEFAULT_BUCKET_EDGES) -> tuple[LengthBucket, ...]:
    """Buckets ``[0,e1], [e1+1,e2], ..., [ek+1,inf)`` from increasing upper bounds (docs/METHOD.md §2, MiniLLM's S-NI
    buckets [0,5]/[6,10]/[11,inf) generalised).

    Args:
        edges: strictly increasing non-negative integers (inclusive upper bounds, in tokens).

    Returns:
        ``len(edges) + 1`` buckets covering every length >= 0 exactly once.

    Raises:
        MetricInputError: an edge is negative or the edges are not strictly increasing.
    """
    edges = [int(e) for e in edges]
    if any(e < 0 for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
        raise MetricInputError(f"length bucket edges must be strictly increasing and >= 0, got {edges}")
    lows = [0] + [e + 1 for e in edges]
    highs: list[int | None] = [*edges, None]
    return tuple(LengthBucket(lo, hi) for lo, hi in zip(lows, highs))


def assign_bucket(length: int, buckets: Sequence[LengthBucket]) -> LengthBucket:
    """The bucket that holds ``length``.

    Raises:
        MetricInputError: no bucket holds it (negative length, or buckets that do not cover it).
    """
    for bucket in buckets:
        if bucket.contains(length):
            return bucket
    raise MetricInputError(f"length {length} falls in none of the buckets {[b.label for b in buckets]}")


def mean_and_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value) of per-seed values.

    Raises:
        MetricInputError: ``values`` is empty.
    """
    if not values:
        raise MetricInputError("mean_and_sd: no values")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
