"""The embedded default dataset: a seeded procedural instruction suite whose references can be checked by a program.

Everything here (templates, word lists, sentences) is written by the switch-kd project; no third-party text. The
suite lets the whole pipeline (SFT, distillation, SWITCH rollouts, evaluation) run without any downloaded data, and
its answers are exact, so a model's output can be verified, not only scored with ROUGE-L.

Nine task families (the record's ``category``), each with 3-12 phrasings of the instruction; some phrasings
put the data in the ``input`` field, so both MiniLLM prompt templates (docs/METHOD.md §5.2) occur:

- ``arithmetic``: add, subtract or multiply two numbers ("What is 417 plus 86?" -> "503"); 1 word.
- ``number_to_words``: a number below 10000 in words (3456 -> "three thousand four hundred fifty-six"); 1-5 words.
- ``spell_word``: spell a word with a named separator ("garden", hyphens -> "g-a-r-d-e-n"); 5-10 letters.
- ``reverse_words``: reverse a list of words ("stone river apple" -> "apple river stone"); 3-9 words.
- ``sort_numbers``: sort 4-14 numbers ascending or descending ("42, 7, 19" -> "7, 19, 42").
- ``change_case``: rewrite a generated sentence in upper or lower case; 7-8 words.
- ``repeat_phrase``: repeat a two-word phrase 2-15 times, comma-separated; 4-30 words.
- ``count_range``: count from a to b in steps of k ("5, 11, 17, 23"); 10-45 numbers.
- ``multiplication_table``: "7 x 1 = 7" ... "7 x m = 7m", one line each, m in 10..20; 50-100 words, 100+ tokens.

Record ``i`` of the suite belongs to family ``i mod 9`` (so every prefix is balanced over families) and is drawn from
its own ``random.Random`` seeded with the string ``"switch-kd-embedded:{seed}:{i}"``. Hence ids
(``"embedded-{seed}-{i:05d}"``) and contents are stable for a given ``(n, seed)``, and the first ``m`` records of a
suite of size ``n >= m`` equal the suite of size ``m``. :func:`describe_embedded_suite` returns the family list,
counts and response-length statistics for the README.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from switch_core.data.records import InstructionRecord

DEFAULT_SUITE_SIZE = 1800
"""Default number of records of the embedded suite (200 per family)."""

# Word lists written for this module (kept compact: fmt off).
# fmt: off
_NOUNS = (
    "river", "stone", "apple", "garden", "window", "lantern", "mountain", "teacher", "student", "bicycle", "candle",
    "forest", "harbor", "pencil", "rabbit", "kettle", "ladder", "meadow", "orchard", "pillow", "rocket", "saddle",
    "tunnel", "violin", "wagon", "basket", "button", "castle", "desert", "engine", "feather", "island", "jacket",
    "kitten", "library", "market", "needle", "ocean", "planet", "puzzle", "signal", "blanket", "compass", "dolphin",
)
_ADJECTIVES = (
    "blue", "quiet", "small", "bright", "heavy", "gentle", "old", "green", "silver", "narrow", "warm", "tiny",
    "golden", "brave", "clever", "distant", "empty", "fresh", "hidden", "lucky", "polite", "rapid", "sturdy",
    "wooden", "yellow",
)
_VERBS = (
    "rests", "waits", "sleeps", "shines", "glows", "sits", "stands", "turns", "hums", "drifts", "leans", "hides",
    "wanders", "floats", "sways", "settles",
)
_PREPOSITIONS = ("near", "under", "behind", "beside", "above", "inside", "below", "across")
_ADVERBS = ("quietly", "slowly", "calmly", "softly", "patiently", "gently", "happily", "silently")
_DETERMINERS = ("the", "every", "one", "this", "that")
_EXTRA_SPELL_WORDS = (
    "alphabet", "umbrella", "elephant", "notebook", "sandwich", "triangle", "calendar", "keyboard", "mushroom",
    "question", "sunflower", "waterfall", "butterfly", "chocolate", "adventure", "lighthouse", "strawberry",
    "telescope",
)
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
# fmt: on
_SPELL_WORDS = _NOUNS + _EXTRA_SPELL_WORDS
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# One generated example: (instruction, input, reference).
_Example = tuple[str, str, str]


def number_to_words(n: int) -> str:
    """English words for ``0 <= n <= 9999``, lower case, hyphenated compounds, no "and".

    Example: ``number_to_words(3456) == "three thousand four hundred fifty-six"``.

    Raises:
        ValueError: ``n`` outside ``[0, 9999]``.
    """
    if not 0 <= n <= 9999:
        raise ValueError(f"number_to_words handles 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    parts = []
    thousands, rest = divmod(n, 1000)
    hundreds, below_hundred = divmod(rest, 100)
    if thousands:
        parts.append(f"{_ONES[thousands]} thousand")
    if hundreds:
        parts.append(f"{_ONES[hundreds]} hundred")
    if below_hundred:
        tens, ones = divmod(below_hundred, 10)
        if below_hundred < 20:
            parts.append(_ONES[below_hundred])
        else:
            parts.append(_TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    return " ".join(parts)


def _sentence(rng: random.Random) -> str:
    """A short declarative sentence from the module's word lists, first letter capitalised, ending in a period."""
    if rng.random() < 0.5:
        words = (
            f"{rng.choice(_DETERMINERS)} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
            f"{rng.choice(_PREPOSITIONS)} the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        )
    else:
        words = (
            f"{rng.choice(_DETERMINERS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {rng.choice(_ADVERBS)} "
            f"{rng.choice(_PREPOSITIONS)} the {rng.choice(_NOUNS)}"
        )
    return words[0].upper() + words[1:] + "."


def _pick(rng: random.Random, phrasings: tuple[tuple[str, str], ...], **values: Any) -> tuple[str, str]:
    """Choose one (instruction, input) phrasing and fill in ``values``."""
    instruction, input_text = rng.choice(phrasings)
    return instruction.format(**values), input_text.format(**values)


_ARITHMETIC_PHRASINGS = {
    "add": (
        ("What is {a} plus {b}?", ""),
        ("Add {a} and {b}.", ""),
        ("Compute {a} + {b}.", ""),
        ("Calculate the sum of the two numbers below.", "{a} and {b}"),
    ),
    "subtract": (
        ("What is {a} minus {b}?", ""),
        ("Subtract {b} from {a}.", ""),
        ("Compute {a} - {b}.", ""),
        ("Calculate the first number below minus the second.", "{a} and {b}"),
    ),
    "multiply": (
        ("What is {a} times {b}?", ""),
        ("Multiply {a} by {b}.", ""),
        ("Compute {a} x {b}.", ""),
        ("Calculate the product of the two numbers below.", "{a} and {b}"),
    ),
}


def _arithmetic(rng: random.Random) -> _Example:
    op = rng.choice(("add", "subtract", "multiply"))
    if op == "multiply":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        result = a * b
    else:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        if op == "subtract" and a < b:
            a, b = b, a
        result = a + b if op == "add" else a - b
    instruction, input_text = _pick(rng, _ARITHMETIC_PHRASINGS[op], a=a, b=b)
    return instruction, input_text, str(result)


_NUMBER_WORDS_PHRASINGS = (
    ("Write the number {n} in words.", ""),
    ("How is {n} written in English words?", ""),
    ("Spell out the following number in words.", "{n}"),
    ("Convert {n} to words.", ""),
)


def _number_words(rng: random.Random) -> _Example:
    digits = rng.randint(1, 4)
    n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
    instruction, input_text = _pick(rng, _NUMBER_WORDS_PHRASINGS, n=n)
    return instruction, input_text, number_to_words(n)


_SEPARATORS = ((" ", "spaces"), ("-", "hyphens"), (", ", "commas"))
_SPELL_PHRASINGS = (
    ('Spell the word "{w}" letter by letter, separated by {sep}.', ""),
    ("Spell out each letter of the word below, separated by {sep}.", "{w}"),
    ('Write the letters of "{w}" one by one, separated by {sep}.', ""),
)


def _spell_word(rng: random.Random) -> _Example:
    word = rng.choice(_SPELL_WORDS)
    separator, separator_name = rng.choice(_SEPARATORS)
    instruction, input_text = _pick(rng, _SPELL_PHRASINGS, w=word, sep=separator_name)
    return instruction, input_text, separator.join(word)


_REVERSE_PHRASINGS = (
    ("Reverse the order of the words below.", "{words}"),
    ("Write these words in reverse order: {words}", ""),
    ("Read the list of words below backwards and write it out.", "{words}"),
)


def _reverse_words(rng: random.Random) -> _Example:
    words = rng.sample(_NOUNS + _ADJECTIVES, rng.randint(3, 9))
    instruction, input_text = _pick(rng, _REVERSE_PHRASINGS, words=" ".join(words))
    return instruction, input_text, " ".join(reversed(words))


_SORT_PHRASINGS = (
    ("Sort the following numbers in {order} order.", "{nums}"),
    ("Arrange these numbers from {first} to {last}: {nums}", ""),
    ("Put the numbers below in {order} order, separated by commas.", "{nums}"),
)


def _sort_numbers(rng: random.Random) -> _Example:
    numbers = rng.sample(range(1000), rng.randint(4, 14))
    descending = rng.random() < 0.5
    order, first, last = ("descending", "largest", "smallest") if descending else ("ascending", "smallest", "largest")
    nums = ", ".join(map(str, numbers))
    instruction, input_text = _pick(rng, _SORT_PHRASINGS, order=order, first=first, last=last, nums=nums)
    return instruction, input_text, ", ".join(map(str, sorted(numbers, reverse=descending)))


_CASE_PHRASINGS = {
    "uppercase": (
        ("Convert the following sentence to uppercase.", "{s}"),
        ("Rewrite this sentence in capital letters: {s}", ""),
        ("Write the sentence below using only uppercase letters.", "{s}"),
    ),
    "lowercase": (
        ("Convert the following sentence to lowercase.", "{s}"),
        ("Rewrite this sentence in small letters only: {s}", ""),
        ("Write the sentence below using only lowercase letters.", "{s}"),
    ),
}


def _change_case(rng: random.Random) -> _Example:
    case = rng.choice(("uppercase", "lowercase"))
    sentence = _sentence(rng)
    if case == "uppercase":
        instruction, input_text = _pick(rng, _CASE_PHRASINGS[case], s=sentence)
        return instruction, input_text, sentence.upper()
    title = sentence.title()
    instruction, input_text = _pick(rng, _CASE_PHRASINGS[case], s=title)
    return instruction, input_text, title.lower()


_REPEAT_PHRASINGS = (
    ('Repeat the phrase "{p}" {n} times, separated by commas.', ""),
    ("Write the phrase below {n} times, separated by commas.", "{p}"),
    ('Say "{p}" {n} times in a row, with commas in between.', ""),
)


def _repeat_phrase(rng: random.Random) -> _Example:
    phrase = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    times = rng.randint(2, 15)
    instruction, input_text = _pick(rng, _REPEAT_PHRASINGS, p=phrase, n=times)
    return instruction, input_text, ", ".join([phrase] * times)


_COUNT_PHRASINGS = (
    ("Count from {a} to {b} in steps of {k}.", ""),
    ("List every number from {a} to {b}, going up by {k} each time.", ""),
    ("Write the sequence that starts at {a}, adds {k} each time and ends at {b}.", ""),
    ("Count up from the first number to the second in steps of the third.", "{a}, {b}, {k}"),
)


def _count_range(rng: random.Random) -> _Example:
    start, step, terms = rng.randint(0, 50), rng.randint(1, 9), rng.randint(10, 45)
    end = start + step * (terms - 1)
    instruction, input_text = _pick(rng, _COUNT_PHRASINGS, a=start, b=end, k=step)
    return instruction, input_text, ", ".join(str(v) for v in range(start, end + 1, step))


_TABLE_PHRASINGS = (
    ("Write the multiplication table of {n} from {n} x 1 to {n} x {m}.", ""),
    ("Give the times table for {n}, up to {n} x {m}, one line per product.", ""),
    ("Write the multiplication table for the number below, up to {m} times.", "{n}"),
)


def _multiplication_table(rng: random.Random) -> _Example:
    n, m = rng.randint(2, 19), rng.randint(10, 20)
    instruction, input_text = _pick(rng, _TABLE_PHRASINGS, n=n, m=m)
    return instruction, input_text, "\n".join(f"{n} x {i} = {n * i}" for i in range(1, m + 1))


@dataclass(frozen=True)
class _Family:
    name: str
    description: str
    phrasings: int
    make: Callable[[random.Random], _Example]


_FAMILIES = (
    _Family(
        "arithmetic",
        "add, subtract or multiply two numbers",
        sum(len(p) for p in _ARITHMETIC_PHRASINGS.values()),
        _arithmetic,
    ),
    _Family(
        "number_to_words", "write a number below 10000 in English words", len(_NUMBER_WORDS_PHRASINGS), _number_words
    ),
    _Family("spell_word", "spell a word letter by letter with a named separator", len(_SPELL_PHRASINGS), _spell_word),
    _Family("reverse_words", "reverse a list of words", len(_REVERSE_PHRASINGS), _reverse_words),
    _Family("sort_numbers", "sort a list of numbers ascending or descending", len(_SORT_PHRASINGS), _sort_numbers),
    _Family(
        "change_case",
        "rewrite a sentence in upper or lower case",
        sum(len(p) for p in _CASE_PHRASINGS.values()),
        _change_case,
    ),
    _Family("repeat_phrase", "repeat a two-word phrase N times", len(_REPEAT_PHRASINGS), _repeat_phrase),
    _Family("count_range", "count from a to b in steps of k", len(_COUNT_PHRASINGS), _count_range),
    _Family(
        "multiplication_table", "multiplication table of n up to n x m", len(_TABLE_PHRASINGS), _multiplication_table
    ),
)

EMBEDDED_FAMILIES: tuple[str, ...] = tuple(f.name for f in _FAMILIES)
"""Task family names, in the round-robin order used by :func:`generate_embedded_suite`."""


def generate_embedded_suite(n: int = DEFAULT_SUITE_SIZE, seed: int = 0) -> list[InstructionRecord]:
    """Generate the embedded procedural instruction suite.

    Args:
        n: number of records; record ``i`` belongs to family ``EMBEDDED_FAMILIES[i % 9]``.
        seed: suite seed; record ``i`` uses ``random.Random(f"switch-kd-embedded:{seed}:{i}")``.

    Returns:
        ``n`` records with ids ``"embedded-{seed}-{i:05d}"``, ``category`` = family name, one reference each,
        ``prompt`` None (formatted with the MiniLLM template, docs/METHOD.md §5.2).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"embedded suite size must be >= 1, got {n}")
    records = []
    for index in range(n):
        family = _FAMILIES[index % len(_FAMILIES)]
        instruction, input_text, reference = family.make(random.Random(f"switch-kd-embedded:{seed}:{index}"))
        records.append(
            InstructionRecord(
                id=f"embedded-{seed}-{index:05d}",
                instruction=instruction,
                references=(reference,),
                input=input_text,
                category=family.name,
            )
        )
    return records


def _length_stats(lengths: list[int]) -> dict[str, float]:
    return {
        "min": min(lengths),
        "median": statistics.median(lengths),
        "mean": round(statistics.fmean(lengths), 2),
        "max": max(lengths),
    }


def describe_embedded_suite(n: int = DEFAULT_SUITE_SIZE, seed: int = 0, tokenizer: Any = None) -> dict[str, Any]:
    """Summarise the embedded suite for documentation (README) and run metadata.

    Args:
        n: suite size, as for :func:`generate_embedded_suite`.
        seed: suite seed.
        tokenizer: optional Hugging Face tokenizer; when given, response lengths are also reported in tokens
            (``tokenizer.encode(reference, add_special_tokens=False)``).

    Returns:
        ``{"size", "seed", "families": {name: {"description", "phrasings", "count", "with_input",
        "response_words": stats, "response_tokens": stats (only with a tokenizer)}}, "response_words": stats,
        "response_chars": stats, "response_tokens": stats (only with a tokenizer)}`` where ``stats`` is
        ``{"min", "median", "mean", "max"}``; words are whitespace-separated pieces.
    """
    records = generate_embedded_suite(n, seed)
    families: dict[str, Any] = {}
    for family in _FAMILIES:
        members = [r for r in records if r.category == family.name]
        if not members:
            continue
        entry: dict[str, Any] = {
            "description": family.description,
            "phrasings": family.phrasings,
            "count": len(members),
            "with_input": sum(1 for r in members if r.input),
            "response_words": _length_stats([len(r.reference.split()) for r in members]),
        }
        if tokenizer is not None:
            entry["response_tokens"] = _length_stats(
                [len(tokenizer.encode(r.reference, add_special_tokens=False)) for r in members]
            )
        families[family.name] = entry
    summary: dict[str, Any] = {
        "size": n,
        "seed": seed,
        "families": families,
        "response_words": _length_stats([len(r.reference.split()) for r in records]),
        "response_chars": _length_stats([len(r.reference) for r in records]),
    }
    if tokenizer is not None:
        summary["response_tokens"] = _length_stats(
            [len(tokenizer.encode(r.reference, add_special_tokens=False)) for r in records]
        )
    return summary
