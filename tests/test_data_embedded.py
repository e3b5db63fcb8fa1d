"""Embedded procedural suite: determinism, balance, references recomputed independently from the text, lengths."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from switch_core.data.embedded import (
    EMBEDDED_FAMILIES,
    describe_embedded_suite,
    generate_embedded_suite,
    number_to_words,
)
from switch_core.data.records import InstructionRecord

_SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_SMALL += ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}


def _words(n: int) -> str:
    """Independent recursive reference for number words (0..9999)."""
    if n < 20:
        return _SMALL[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _SMALL[n % 10])
    if n < 1000:
        return _SMALL[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _words(n % 100))
    return _SMALL[n // 1000] + " thousand" + ("" if n % 1000 == 0 else " " + _words(n % 1000))


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _expected(record: InstructionRecord) -> str:
    """Recompute the answer from the instruction and input text alone."""
    text, data = record.instruction, record.input
    family = record.category
    if family == "arithmetic":
        a, b = _ints(text + " " + data)
        if re.search(r"plus|Add |\+|sum", text):
            return str(a + b)
        if re.search(r"minus|Subtract|-", text):
            return str(b - a) if text.startswith("Subtract") else str(a - b)
        return str(a * b)
    if family == "number_to_words":
        (n,) = _ints(text + " " + data)
        return _words(n)
    if family == "spell_word":
        word = data or re.search(r'"(\w+)"', text).group(1)
        sep = {"spaces": " ", "hyphens": "-", "commas": ", "}[re.search(r"separated by (\w+)", text).group(1)]
        return sep.join(word)
    if family == "reverse_words":
        words = (data or text.split(": ", 1)[1]).split()
        return " ".join(words[::-1])
    if family == "sort_numbers":
        numbers = _ints(data or text.split(": ", 1)[1])
        descending = "descending" in text or "largest to smallest" in text
        return ", ".join(map(str, sorted(numbers, reverse=descending)))
    if family == "change_case":
        sentence = data or text.split(": ", 1)[1]
        return sentence.upper() if ("uppercase" in text or "capital" in text) else sentence.lower()
    if family == "repeat_phrase":
        phrase = data or re.search(r'"([^"]+)"', text).group(1)
        (times,) = _ints(text)
        return ", ".join([phrase] * times)
    if family == "count_range":
        a, b, k = _ints(data) if data else _ints(text)
        if "starts at" in text:  # "starts at {a}, adds {k} each time and ends at {b}"
            a, k, b = _ints(text)
        return ", ".join(str(v) for v in range(a, b + 1, k))
    if family == "multiplication_table":
        n, m = (int(data), _ints(text)[0]) if data else (_ints(text)[0], _ints(text)[-1])
        return "\n".join(f"{n} x {i} = {n * i}" for i in range(1, m + 1))
    raise AssertionError(f"unknown family {family}")


def test_number_to_words_hand_cases() -> None:
    cases = {
        0: "zero",
        7: "seven",
        13: "thirteen",
        20: "twenty",
        21: "twenty-one",
        100: "one hundred",
        105: "one hundred five",
        110: "one hundred ten",
        999: "nine hundred ninety-nine",
        1000: "one thousand",
        1001: "one thousand one",
        3456: "three thousand four hundred fifty-six",
        9999: "nine thousand nine hundred ninety-nine",
    }
    assert {n: number_to_words(n) for n in cases} == cases
    assert all(number_to_words(n) == _words(n) for n in range(0, 10000, 7))
    with pytest.raises(ValueError, match="0..9999"):
        number_to_words(10000)


def test_suite_is_deterministic_with_stable_ids_and_prefixes() -> None:
    suite = generate_embedded_suite(90, seed=5)
    assert suite == generate_embedded_suite(90, seed=5)
    assert generate_embedded_suite(40, seed=5) == suite[:40]
    assert [r.id for r in suite[:3]] == ["embedded-5-00000", "embedded-5-00001", "embedded-5-00002"]
    assert len({r.id for r in suite}) == 90
    other = generate_embedded_suite(90, seed=6)
    assert sum(a.instruction != b.instruction or a.input != b.input for a, b in zip(suite, other)) > 60
    with pytest.raises(ValueError, match="size must be >= 1"):
        generate_embedded_suite(0, seed=0)


def test_suite_is_balanced_over_all_families() -> None:
    assert len(EMBEDDED_FAMILIES) == 9
    counts = Counter(r.category for r in generate_embedded_suite(90, seed=0))
    assert counts == {family: 10 for family in EMBEDDED_FAMILIES}
    uneven = Counter(r.category for r in generate_embedded_suite(22, seed=0))
    assert set(uneven) == set(EMBEDDED_FAMILIES) and max(uneven.values()) - min(uneven.values()) == 1


def test_references_are_verifiable_from_the_text() -> None:
    suite = generate_embedded_suite(450, seed=1)
    for record in suite:
        assert record.references == (_expected(record),), record
        assert record.prompt is None
    with_input = Counter(r.category for r in suite if r.input)
    assert set(with_input) == set(EMBEDDED_FAMILIES)  # every family has phrasings that use the input field
    assert sum(1 for r in suite if not r.input) > 150  # and phrasings without one
    # distinct phrasings actually occur
    arithmetic_openings = {r.instruction.split()[0] for r in suite if r.category == "arithmetic"}
    assert {"What", "Add", "Compute", "Multiply", "Subtract", "Calculate"} <= arithmetic_openings


def test_response_lengths_span_short_to_long() -> None:
    summary = describe_embedded_suite(n=1800, seed=0)
    assert summary["size"] == 1800 and list(summary["families"]) == list(EMBEDDED_FAMILIES)
    assert all(entry["count"] == 200 for entry in summary["families"].values())
    assert summary["response_words"]["min"] == 1
    assert summary["response_words"]["max"] >= 100  # 100+ whitespace pieces => 100+ tokens for any BPE
    assert summary["families"]["arithmetic"]["response_words"]["max"] <= 1
    assert summary["families"]["multiplication_table"]["response_words"]["min"] >= 50


def test_describe_reports_token_lengths_with_a_tokenizer() -> None:
    class WhitespaceTokenizer:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            assert add_special_tokens is False
            return list(range(len(text.split())))

    summary = describe_embedded_suite(n=27, seed=2, tokenizer=WhitespaceTokenizer())
    assert summary["response_tokens"] == summary["response_words"]
    suite = generate_embedded_suite(27, seed=2)
    lengths = sorted(len(r.reference.split()) for r in suite)
    assert summary["response_words"]["min"] == lengths[0] and summary["response_words"]["max"] == lengths[-1]
    assert summary["response_words"]["median"] == lengths[13]
    assert summary["response_chars"]["max"] == max(len(r.reference) for r in suite)
    family = summary["families"]["spell_word"]
    assert family["count"] == 3 and family["response_tokens"] == family["response_words"]
