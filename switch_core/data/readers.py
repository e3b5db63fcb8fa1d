"""Readers that turn instruction datasets into :class:`InstructionRecord` lists, never silently dropping rows.

Sources:

- MiniLLM / DistiLLM processed JSONL (the evaluation files under ``../shared/data``, docs/METHOD.md §5.1): fields
  ``instruction``, ``input``, ``output`` (a string, or a list of reference strings for S-NI), ``prompt`` (already
  formatted; ``<n>`` stands for a newline) and ``topic`` (Vicuna: ``category``).
- raw databricks-dolly-15k JSONL: ``instruction``, ``context``, ``response``, ``category``.
- for both JSONL formats, a folder: its ``.jsonl`` files are read in name order as one source.
- any Hugging Face dataset by hub name, local data folder (jsonl / parquet / csv loadable by ``datasets.load_dataset``)
  or ``save_to_disk`` folder, with Dolly-raw or MiniLLM columns (detected from the column names).
- the embedded procedural suite (:mod:`switch_core.data.embedded`).

Bad rows (not JSON, not an object, a missing field, a wrong type, an empty value, a duplicate id) raise
:class:`DataFormatError` naming the file, line and field by default; with ``on_bad_rows="skip"`` they are skipped and
listed in the :class:`BadRowReport`. A source that yields no record is always an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from switch_core.data.embedded import DEFAULT_SUITE_SIZE, generate_embedded_suite
from switch_core.data.records import DataFormatError, InstructionRecord

__all__ = [
    "BadRowPolicy",
    "BadRowReport",
    "DataFormatError",
    "ReadResult",
    "RowError",
    "SourceKind",
    "dolly_row_to_record",
    "load_records",
    "minillm_row_to_record",
    "read_dolly_raw",
    "read_hf_dataset",
    "read_jsonl",
    "read_minillm_jsonl",
]

BadRowPolicy = Literal["error", "skip"]
SourceKind = Literal["embedded", "minillm", "dolly_raw", "hf"]

_SKIP_HINT = (
    "Fix the row, or skip bad rows with --set data.on_bad_rows=skip (on_bad_rows='skip' in Python); skipped rows "
    "are counted in the data report."
)
# (parse a row dict into a record, given the id to use when the row has none)
_RowParser = Callable[[dict[str, Any], str], InstructionRecord]


@dataclass(frozen=True)
class RowError:
    """One skipped row: where (1-based JSONL line, or 0-based dataset row), why, which field, full message."""

    line: int
    reason: str
    field: str | None
    message: str


@dataclass
class BadRowReport:
    """What a reader saw: rows read, rows skipped (with reason, field and line) and blank lines ignored.

    Attributes:
        source: file path or ``"name[split]"`` of a Hugging Face dataset.
        rows_read: non-blank rows seen.
        errors: the skipped rows (empty unless ``on_bad_rows="skip"``).
        blank_lines: 1-based numbers of whitespace-only lines, which are ignored (not rows).
    """

    source: str
    rows_read: int = 0
    errors: list[RowError] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        """Number of skipped rows."""
        return len(self.errors)

    @property
    def rows_kept(self) -> int:
        """Number of rows turned into records."""
        return self.rows_read - self.rows_skipped

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason, e.g. ``{"invalid_json": 2, "missing_field": 1}``."""
        return dict(Counter(e.reason for e in self.errors))

    def lines(self, reason: str | None = None) -> list[int]:
        """Line (row) numbers of skipped rows, optionally only those with ``reason``."""
        return [e.line for e in self.errors if reason is None or e.reason == reason]

    def summary(self) -> str:
        """One human-readable line, e.g. ``"data.jsonl: 98 of 100 rows kept; skipped: invalid_json=2 (lines 3, 7)"``."""
        text = f"{self.source}: {self.rows_kept} of {self.rows_read} rows kept"
        if self.errors:
            parts = [
                f"{reason}={count} (lines {', '.join(map(str, self.lines(reason)[:10]))}"
                + (", ..." if count > 10 else "")
                + ")"
                for reason, count in sorted(self.counts().items())
            ]
            text += "; skipped: " + ", ".join(parts)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for run metadata: ``source``, ``rows_read``, ``kept``, ``skipped`` (count),
        ``skipped_by_reason`` (reason -> count), ``skipped_rows`` (one dict per :class:`RowError`), ``blank_lines``.
        """
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "kept": self.rows_kept,
            "skipped": self.rows_skipped,
            "skipped_by_reason": self.counts(),
            "skipped_rows": [asdict(e) for e in self.errors],
            "blank_lines": list(self.blank_lines),
        }


@dataclass
class ReadResult:
    """Records read from one source and the report of what was skipped."""

    records: list[InstructionRecord]
    report: BadRowReport


def _check_policy(on_bad_rows: str) -> None:
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")


_OTHER_FORMAT = {"output": ("response", "dolly_raw"), "response": ("output", "minillm")}
"""Required field -> (the other format's field, its data.source): a row of the other format is named as such."""


def _missing(row: dict[str, Any], name: str) -> DataFormatError:
    text = f"missing required field {name!r} (row has {sorted(row)})"
    other_field, other_source = _OTHER_FORMAT.get(name, (None, None))
    if other_field in row:
        text += f"; the row has {other_field!r}, as {other_source} data does: set data.source={other_source}"
    return DataFormatError(text, field=name, reason="missing_field")


def _required_str(row: dict[str, Any], name: str) -> str:
    if name not in row:
        raise _missing(row, name)
    value = row[name]
    if not isinstance(value, str):
        raise DataFormatError(
            f"field {name!r} must be a string, got {type(value).__name__}", field=name, reason="wrong_type"
        )
    if not value.strip():
        raise DataFormatError(f"field {name!r} is empty", field=name, reason="empty_value")
    return value


def _optional_str(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise DataFormatError(
            f"field {name!r} must be a string or absent, got {type(value).__name__}", field=name, reason="wrong_type"
        )
    return value


def _references(row: dict[str, Any], name: str) -> tuple[str, ...]:
    if name not in row:
        raise _missing(row, name)
    value = row[name]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(
            f"field {name!r} must be a string or a list of strings, got {type(value).__name__}",
            field=name,
            reason="wrong_type",
        )
    if not value or any(not v.strip() for v in value):
        raise DataFormatError(f"field {name!r} is empty or holds an empty reference", field=name, reason="empty_value")
    return tuple(value)


def _row_id(row: dict[str, Any], default_id: str) -> str:
    if "id" not in row or row["id"] is None:
        return default_id
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataFormatError(
            f"field 'id' must be a non-empty string or an integer, got {value!r}", field="id", reason="wrong_type"
        )
    return str(value)


def minillm_row_to_record(row: dict[str, Any], default_id: str) -> InstructionRecord:
    """Convert one MiniLLM-format row (docs/METHOD.md §5.1).

    ``output`` may be a string or a list of references; the category comes from ``topic`` or, for Vicuna,
    ``category``; ``prompt`` is kept with ``<n>`` replaced by a newline (METHOD.md §5.2); ``id`` is used if present.

    Raises:
        DataFormatError: missing ``instruction``/``output``, wrong types or empty values (``field`` set).
    """
    instruction = _required_str(row, "instruction")
    references = _references(row, "output")
    input_text = _optional_str(row, "input") or ""
    category = _optional_str(row, "topic")
    if category is None:
        category = _optional_str(row, "category")
    prompt = _optional_str(row, "prompt")
    return InstructionRecord(
        id=_row_id(row, default_id),
        instruction=instruction,
        references=references,
        input=input_text,
        category=category,
        prompt=None if prompt is None else prompt.replace("<n>", "\n"),
    )


def dolly_row_to_record(row: dict[str, Any], default_id: str) -> InstructionRecord:
    """Convert one raw databricks-dolly-15k row (``instruction``, ``context``, ``response``, ``category``).

    ``context`` becomes ``input`` (MiniLLM does the same) and may be empty or absent; ``category`` may be absent.

    Raises:
        DataFormatError: missing ``instruction``/``response``, wrong types or empty values (``field`` set).
    """
    instruction = _required_str(row, "instruction")
    response = _required_str(row, "response")
    return InstructionRecord(
        id=_row_id(row, default_id),
        instruction=instruction,
        references=(response,),
        input=_optional_str(row, "context") or "",
        category=_optional_str(row, "category"),
    )


def _collect(
    rows: Iterable[tuple[str, int, dict[str, Any] | DataFormatError]],
    parse: _RowParser,
    *,
    source: str,
    unit: str,
    id_prefix: str,
    on_bad_rows: BadRowPolicy,
    report: BadRowReport,
) -> ReadResult:
    """Parse ``(file or dataset, position, row)`` triples, de-duplicate ids, apply the bad-row policy; error if
    nothing is left (``source`` names the whole input)."""
    records: list[InstructionRecord] = []
    first_seen: dict[str, tuple[str, int]] = {}
    for index, (origin, position, row) in enumerate(rows):
        report.rows_read += 1
        try:
            if isinstance(row, DataFormatError):
                raise row
            if not isinstance(row, dict):
                raise DataFormatError(f"row must be a JSON object, got {type(row).__name__}", reason="not_an_object")
            record = parse(row, f"{id_prefix}-{index:05d}")
            if record.id in first_seen:
                first_origin, first_position = first_seen[record.id]
                at = f"{unit} {first_position}" + (f" of {first_origin}" if first_origin != origin else "")
                raise DataFormatError(f"duplicate id {record.id!r} (first at {at})", field="id", reason="duplicate_id")
        except DataFormatError as err:
            where = f"{origin}, {unit} {position}" + (f", field {err.field!r}" if err.field else "")
            if on_bad_rows == "error":
                raise DataFormatError(
                    f"{where}: {err}. {_SKIP_HINT}", source=origin, line=position, field=err.field, reason=err.reason
                ) from None
            report.errors.append(RowError(position, err.reason, err.field, f"{where}: {err}"))
            continue
        first_seen[record.id] = (origin, position)
        records.append(record)
    if not records:
        empty = "the file is empty or has only blank lines" if unit == "line" else "the split has no rows"
        detail = f"every row is bad ({report.summary()})" if report.rows_read else empty
        raise DataFormatError(f"{source}: no records: {detail}", source=source, reason="empty_source")
    return ReadResult(records, report)


def _jsonl_rows(path: Path, blank_lines: list[int]) -> Iterator[tuple[int, dict[str, Any] | DataFormatError]]:
    """Yield (1-based line number, parsed object or the error) for each non-blank line; append the numbers of
    blank lines to ``blank_lines``."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield (
                    line_no,
                    DataFormatError(f"not UTF-8 text ({err.reason} at byte {err.start})", reason="invalid_utf8"),
                )
                continue
            if not text.strip():
                blank_lines.append(line_no)
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as err:
                yield (
                    line_no,
                    DataFormatError(f"not valid JSON ({err.msg} at column {err.colno})", reason="invalid_json"),
                )


def _default_prefix(path: Path) -> str:
    if path.is_dir():
        return path.name or "data"
    return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem


def _jsonl_files(path: Path) -> list[Path]:
    """The file ``path``, or the ``.jsonl`` files of the folder ``path`` in name order.

    Raises:
        DataFormatError: no such file or folder, or a folder without ``.jsonl`` files.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataFormatError(f"{path}: no such file or folder", source=str(path), reason="missing_file")
    files = sorted(p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file())
    if not files:
        found = sorted(p.name for p in path.iterdir())[:10]
        raise DataFormatError(
            f"{path}: a folder without .jsonl files (it holds {found or 'nothing'}); data.path takes a .jsonl file "
            "or a folder of .jsonl files, read in name order",
            source=str(path), reason="missing_file",
        )
    return files


def read_jsonl(
    path: str | Path,
    parse: Callable[[dict[str, Any], str], InstructionRecord],
    *,
    on_bad_rows: BadRowPolicy = "error",
    id_prefix: str | None = None,
) -> ReadResult:
    """Read a JSONL file, or a folder's ``.jsonl`` files in name order, row by row with a row parser, applying the
    bad-row policy.

    Args:
        path: the ``.jsonl`` file (UTF-8; whitespace-only lines are ignored and, for a file, listed in
            ``report.blank_lines``), or a folder whose ``*.jsonl`` files are read one after the other, sorted by name
            (other files are ignored; line numbers in errors are those of the named file).
        parse: ``parse(row_dict, default_id) -> InstructionRecord``; raises :class:`DataFormatError` with ``field``
            and ``reason`` set for a bad row.
        on_bad_rows: ``"error"`` raises on the first bad row; ``"skip"`` skips it and reports it.
        id_prefix: rows without ``id`` get ``f"{id_prefix}-{row_index:05d}"`` (index over non-blank rows from 0,
            across a folder's files); default ``"{parent folder}-{file stem}"`` for a file, the folder's name for a
            folder.

    Returns:
        Records in file order and the bad-row report.

    Raises:
        DataFormatError: missing file or folder, a folder without ``.jsonl`` files, a bad row with ``on_bad_rows="error"`` (message names file, line and field),
            or no record at all.
        ValueError: ``on_bad_rows`` is neither ``"error"`` nor ``"skip"``.
    """
    _check_policy(on_bad_rows)
    path = Path(path)
    files = _jsonl_files(path)
    report = BadRowReport(source=str(path))
    blank_lines = report.blank_lines if files == [path] else []  # line numbers of a folder's files would be ambiguous
    return _collect(
        ((str(file), line, row) for file in files for line, row in _jsonl_rows(file, blank_lines)),
        parse,
        source=str(path),
        unit="line",
        id_prefix=id_prefix or _default_prefix(path),
        on_bad_rows=on_bad_rows,
        report=report,
    )


def read_minillm_jsonl(
    path: str | Path, *, on_bad_rows: BadRowPolicy = "error", id_prefix: str | None = None
) -> ReadResult:
    """Read a MiniLLM / DistiLLM processed JSONL file (docs/METHOD.md §5.1; see :func:`minillm_row_to_record`).

    Args:
        path: the ``.jsonl`` file, or a folder of ``.jsonl`` files (read in name order, see :func:`read_jsonl`).
        on_bad_rows: ``"error"`` (default) raises on the first bad row; ``"skip"`` skips it and reports it.
        id_prefix: prefix of generated ids (rows without ``id`` get ``f"{id_prefix}-{row_index:05d}"``, the index
            counting non-blank rows from 0); default ``"{parent folder}-{file stem}"``, e.g. ``"dolly-valid"``.

    Returns:
        Records in file order and the bad-row report.

    Raises:
        DataFormatError: missing file or folder, a folder without ``.jsonl`` files, a bad row (with
            ``on_bad_rows="error"``; the message names file, line and field), or no record at all.
        ValueError: ``on_bad_rows`` is neither ``"error"`` nor ``"skip"``.
    """
    return read_jsonl(path, minillm_row_to_record, on_bad_rows=on_bad_rows, id_prefix=id_prefix)


def read_dolly_raw(
    path: str | Path, *, on_bad_rows: BadRowPolicy = "error", id_prefix: str | None = None
) -> ReadResult:
    """Read raw databricks-dolly-15k JSONL (``instruction``, ``context``, ``response``, ``category``).

    Args, returns and errors as :func:`read_minillm_jsonl`; rows are converted by :func:`dolly_row_to_record`.
    """
    return read_jsonl(path, dolly_row_to_record, on_bad_rows=on_bad_rows, id_prefix=id_prefix)


def _detect_parser(columns: list[str], source: str) -> _RowParser:
    names = set(columns)
    if {"instruction", "response"} <= names:
        return dolly_row_to_record
    if {"instruction", "output"} <= names:
        return minillm_row_to_record
    raise DataFormatError(
        f"{source}: unknown columns {sorted(names)}; expected Dolly raw columns (instruction, context, response, "
        "category) or MiniLLM columns (instruction, input, output, prompt)",
        source=source,
        reason="unknown_columns",
    )


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _load_hf(name_or_path: str, split: str, config_name: str | None, source: str) -> Any:
    import datasets  # heavy import, only needed here

    local = Path(name_or_path)
    try:
        if _is_saved_to_disk(local):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataFormatError(
                        f"{source}: no split {split!r}; available: {sorted(loaded)}",
                        source=source,
                        reason="load_failed",
                    )
                return loaded[split]
            return loaded
        return datasets.load_dataset(name_or_path, config_name, split=split)
    except (OSError, ValueError) as err:  # FileNotFoundError, ConnectionError (offline), unknown split, ...
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(
            f"{source}: could not load the dataset ({type(err).__name__}: {err}). Check the name / path and split; "
            "hub names need network access (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset)",
            source=source,
            reason="load_failed",
        ) from err


def read_hf_dataset(
    name_or_path: str | Path,
    *,
    split: str = "train",
    config_name: str | None = None,
    on_bad_rows: BadRowPolicy = "error",
    id_prefix: str | None = None,
) -> ReadResult:
    """Read a Hugging Face dataset with Dolly-raw or MiniLLM columns (detected from the column names).

    Args:
        name_or_path: hub name (e.g. ``"databricks/databricks-dolly-15k"``), a local folder of data files loadable by
            ``datasets.load_dataset(path)``, or a ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``).
        split: split to read (ignored for a ``save_to_disk`` folder holding a single ``Dataset``).
        config_name: dataset configuration, passed to ``load_dataset``.
        on_bad_rows: as in :func:`read_minillm_jsonl`; row numbers are 0-based dataset indices.
        id_prefix: prefix of generated ids; default ``"{last path component of the name}-{split}"``.

    Returns:
        Records in dataset order and the bad-row report (``source`` is ``"name[split]"``).

    Raises:
        DataFormatError: the dataset cannot be loaded (``reason="load_failed"``), its columns match neither format
            (``"unknown_columns"``), a bad row (with ``on_bad_rows="error"``), or no record at all.
        ValueError: ``on_bad_rows`` is neither ``"error"`` nor ``"skip"``.
    """
    _check_policy(on_bad_rows)
    name = str(name_or_path)
    source = f"{name}[{split}]"
    dataset = _load_hf(name, split, config_name, source)
    parse = _detect_parser(list(dataset.column_names), source)
    report = BadRowReport(source=source)
    prefix = id_prefix or f"{Path(name.rstrip('/')).name}-{split}"
    return _collect(
        ((source, index, row) for index, row in enumerate(dataset)),
        parse,
        source=source,
        unit="row",
        id_prefix=prefix,
        on_bad_rows=on_bad_rows,
        report=report,
    )


def load_records(
    source: SourceKind,
    path: str | Path | None = None,
    *,
    split: str = "train",
    config_name: str | None = None,
    on_bad_rows: BadRowPolicy = "error",
    embedded_size: int = DEFAULT_SUITE_SIZE,
    seed: int = 0,
) -> ReadResult:
    """Read records from any supported source; the one entry point used by the commands.

    Args:
        source: ``"embedded"`` (procedural suite, no ``path``), ``"minillm"`` / ``"dolly_raw"`` (JSONL file, or folder
            of ``.jsonl`` files, at ``path``) or ``"hf"`` (hub name or local folder at ``path``).
        path: file, folder or hub name; must be None for ``"embedded"``.
        split: split for ``"hf"`` only.
        config_name: dataset configuration for ``"hf"`` only.
        on_bad_rows: bad-row policy for the file / dataset readers.
        embedded_size: number of records of the embedded suite.
        seed: seed of the embedded suite.

    Returns:
        The records and a :class:`BadRowReport` (empty for ``"embedded"``).

    Raises:
        DataFormatError: see the individual readers.
        ValueError: unknown ``source``; ``path`` missing for a file source or given for ``"embedded"``.
    """
    if source == "embedded":
        if path is not None:
            raise ValueError(f"source 'embedded' takes no path, got {path!r}")
        records = generate_embedded_suite(embedded_size, seed)
        return ReadResult(
            records, BadRowReport(source=f"embedded(n={embedded_size}, seed={seed})", rows_read=len(records))
        )
    if source not in ("minillm", "dolly_raw", "hf"):
        raise ValueError(f"unknown data source {source!r}; use one of 'embedded', 'minillm', 'dolly_raw', 'hf'")
    if path is None:
        raise ValueError(f"data source {source!r} needs a path (file, folder or dataset name)")
    if source == "minillm":
        return read_minillm_jsonl(path, on_bad_rows=on_bad_rows)
    if source == "dolly_raw":
        return read_dolly_raw(path, on_bad_rows=on_bad_rows)
    return read_hf_dataset(path, split=split, config_name=config_name, on_bad_rows=on_bad_rows)
