"""What differs between two nested dicts (a saved fingerprint and the current one, a pipeline stage's stamps), named
by dotted keys with both values, e.g. ``optim.lr (0.0001 -> 0.0002)`` rather than ``optim``."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ABSENT = "absent"
"""How a key missing on one side is shown."""

_MISSING = object()
_LONGEST = 24
"""Longest shown value in characters (a longer one, e.g. a SHA-256, is cut and ends with …)."""


@dataclass(frozen=True)
class Change:
    """One differing leaf: its dotted key and its value before and after (``_MISSING`` when absent on that side)."""

    key: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.key} ({_show(self.before)} -> {_show(self.after)})"


def _show(value: Any) -> str:
    if value is _MISSING:
        return ABSENT
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _LONGEST else text[: _LONGEST - 1] + "…"


def _leaves(value: Any, key: str, out: dict[str, Any], empty_as_absent: bool) -> None:
    if isinstance(value, Mapping) and value:
        for name, item in value.items():
            _leaves(item, f"{key}.{name}", out, empty_as_absent)
    elif not (empty_as_absent and isinstance(value, Mapping)):
        out[key] = value


def _flat(tree: Mapping[str, Any], ignore: frozenset[str], empty_as_absent: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key not in ignore:
            _leaves(value, str(key), out, empty_as_absent)
    return out


def dict_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], *, ignore: frozenset[str] = frozenset(),
    empty_as_absent: bool = False,
) -> list[Change]:
    """The leaves that differ between two nested dicts, sorted by dotted key.

    A leaf is a value that is not a non-empty mapping (lists are compared whole); a key present on one side only is
    a change from or to absent. Equality is Python's ``==`` (``1 == 1.0``).

    Args:
        before: the old dict (e.g. the fingerprint saved with a training state).
        after: the new dict.
        ignore: top-level keys left out of the comparison.
        empty_as_absent: an empty mapping counts as absent, so ``{}`` -> ``{"lr": 2}`` is the one change
            ``x.lr (absent -> 2)`` and ``{}`` -> absent none.

    Returns:
        One :class:`Change` per differing leaf (``str(change)`` reads ``optim.lr (0.0001 -> 0.0002)``).
    """
    old, new = _flat(before, ignore, empty_as_absent), _flat(after, ignore, empty_as_absent)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))
    return [Change(k, old.get(k, _MISSING), new.get(k, _MISSING)) for k in keys]
