"""Seeded train/dev(/test) splits, written as JSONL (atomically) and read back losslessly.

Split files hold one :meth:`InstructionRecord.to_dict` object per line, so later stages (and DVC) track plain files
and reading them back gives equal records.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from switch_core.atomic import atomic_write_jsonl
from switch_core.data.readers import read_jsonl
from switch_core.data.records import DataFormatError, InstructionRecord

SPLIT_NAMES = ("train", "dev", "test")


def split_records(
    records: Sequence[InstructionRecord], *, dev_size: int, test_size: int = 0, seed: int
) -> dict[str, list[InstructionRecord]]:
    """Deterministic, seeded, disjoint split.

    The record positions are shuffled with ``random.Random(seed)``; the first ``dev_size`` go to dev, the next
    ``test_size`` to test, the rest to train. Each split keeps the input order of its records.

    Args:
        records: all records; ids must be unique.
        dev_size: number of dev records, >= 1.
        test_size: number of test records, >= 0 (no ``"test"`` key when 0).
        seed: shuffle seed.

    Returns:
        ``{"train": [...], "dev": [...]}`` plus ``"test"`` when ``test_size > 0``.

    Raises:
        ValueError: ``dev_size < 1``, ``test_size < 0``, or no record left for train.
        DataFormatError: duplicate ids (``reason="duplicate_id"``).
    """
    if dev_size < 1:
        raise ValueError(f"dev_size must be >= 1, got {dev_size}")
    if test_size < 0:
        raise ValueError(f"test_size must be >= 0, got {test_size}")
    if dev_size + test_size >= len(records):
        raise ValueError(
            f"dev_size={dev_size} + test_size={test_size} leaves no training record out of {len(records)}; "
            "lower dev_size/test_size"
        )
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataFormatError(
                f"duplicate record id {record.id!r}; ids must be unique to split", field="id", reason="duplicate_id"
            )
        seen.add(record.id)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    dev = sorted(order[:dev_size])
    test = sorted(order[dev_size : dev_size + test_size])
    train = sorted(order[dev_size + test_size :])
    splits = {"train": [records[i] for i in train], "dev": [records[i] for i in dev]}
    if test_size:
        splits["test"] = [records[i] for i in test]
    return splits


def write_records(records: Sequence[InstructionRecord], path: str | Path) -> Path:
    """Write records as JSONL (UTF-8, one ``to_dict()`` object per line) atomically (temporary sibling, rename).

    Args:
        records: non-empty sequence of records.
        path: destination file; parent folders are created.

    Returns:
        The destination path.

    Raises:
        DataFormatError: ``records`` is empty (an empty split is an error, ``reason="empty_source"``).
    """
    path = Path(path)
    if not records:
        raise DataFormatError(f"{path}: refusing to write an empty split", source=str(path), reason="empty_source")
    atomic_write_jsonl(path, (record.to_dict() for record in records))
    return path


def read_records(path: str | Path) -> list[InstructionRecord]:
    """Read a file written by :func:`write_records`; every row must be valid.

    Returns:
        The records, equal to those written.

    Raises:
        DataFormatError: missing file, a bad row (message names file, line and field) or an empty file.
    """
    return read_jsonl(path, lambda row, _default_id: InstructionRecord.from_dict(row), on_bad_rows="error").records


def write_splits(splits: dict[str, Sequence[InstructionRecord]], directory: str | Path) -> dict[str, Path]:
    """Write each split to ``directory/{name}.jsonl`` with :func:`write_records`.

    Args:
        splits: split name (one of ``"train"``, ``"dev"``, ``"test"``) -> records.
        directory: output folder.

    Returns:
        Split name -> written path.

    Raises:
        ValueError: an unknown split name.
        DataFormatError: an empty split.
    """
    unknown = sorted(set(splits) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; use {list(SPLIT_NAMES)}")
    return {name: write_records(records, Path(directory) / f"{name}.jsonl") for name, records in splits.items()}
