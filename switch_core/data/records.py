"""The one record type every dataset is read into: an instruction, an optional input and its reference outputs.

A record is what the MiniLLM / DistiLLM evaluation data calls a row (docs/METHOD.md §5.1): ``instruction``, ``input``,
``output`` (one string, or a list of reference strings for S-NI) and the pre-formatted ``prompt``. Training uses the
first reference as the response; ROUGE-L takes the max over all references (docs/METHOD.md §5.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DataFormatError(ValueError):
    """Malformed data: a row that is not JSON, a missing field, a wrong type, an empty file or split.

    Attributes:
        source: file path or dataset name the bad data came from ("" when not known).
        line: 1-based line number in a JSONL file, or 0-based row index in a Hugging Face dataset; None if not a row.
        field: name of the offending field, or None.
        reason: short machine-readable reason ("invalid_json", "not_an_object", "missing_field", "wrong_type",
            "empty_value", "unknown_field", "duplicate_id", "invalid_utf8", "missing_file", "empty_source",
            "unknown_columns", "load_failed").
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        line: int | None = None,
        field: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class InstructionRecord:
    """One instruction-following example.

    Attributes:
        id: identifier, unique within a dataset (readers derive one from the file name and row index when the data
            has none, e.g. ``"dolly-valid-00000"``).
        instruction: the task description shown to the model.
        references: one or more reference outputs; ``references[0]`` is the training response.
        input: optional context for the instruction ("" when absent; MiniLLM's ``input``, Dolly's ``context``).
        category: task family or dataset topic (Dolly ``category``/``topic``, S-NI task name, Vicuna ``category``).
        prompt: the already formatted prompt of a benchmark file, used verbatim for evaluation (docs/METHOD.md §5.2);
            None when the prompt is to be built from the template.

    Raises:
        DataFormatError: on construction, if a field has the wrong type, ``id`` or ``instruction`` is empty, or there
            is no reference / an empty reference.
    """

    id: str
    instruction: str
    references: tuple[str, ...]
    input: str = ""
    category: str | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.references, list):
            object.__setattr__(self, "references", tuple(self.references))
        for name in ("id", "instruction", "input"):
            if not isinstance(getattr(self, name), str):
                raise DataFormatError(
                    f"record field {name!r} must be a string, got {type(getattr(self, name)).__name__}",
                    field=name,
                    reason="wrong_type",
                )
        for name in ("category", "prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DataFormatError(
                    f"record field {name!r} must be a string or None, got {type(value).__name__}",
                    field=name,
                    reason="wrong_type",
                )
        if not self.id:
            raise DataFormatError("record field 'id' is empty", field="id", reason="empty_value")
        if not self.instruction.strip():
            raise DataFormatError(
                f"record {self.id!r}: field 'instruction' is empty", field="instruction", reason="empty_value"
            )
        if not isinstance(self.references, tuple) or not all(isinstance(r, str) for r in self.references):
            raise DataFormatError(
                f"record {self.id!r}: 'references' must be a tuple of strings", field="references", reason="wrong_type"
            )
        if not self.references:
            raise DataFormatError(
                f"record {self.id!r}: 'references' holds no reference output", field="references", reason="empty_value"
            )
        if any(not r.strip() for r in self.references):
            raise DataFormatError(
                f"record {self.id!r}: a reference output is empty", field="references", reason="empty_value"
            )

    @property
    def reference(self) -> str:
        """The first reference output: the response used for training."""
        return self.references[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (``references`` as a list); inverse of :meth:`from_dict`."""
        return {
            "id": self.id,
            "instruction": self.instruction,
            "input": self.input,
            "references": list(self.references),
            "category": self.category,
            "prompt": self.prompt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstructionRecord:
        """Build a record from :meth:`to_dict` output.

        Args:
            data: dict with keys ``id``, ``instruction``, ``references`` (list of str) and optionally ``input``,
                ``category``, ``prompt``.

        Returns:
            The record.

        Raises:
            DataFormatError: ``data`` is not a dict, a required key is missing, an unknown key is present, or a
                value has the wrong type (``field`` names the key).
        """
        if not isinstance(data, dict):
            raise DataFormatError(f"a record must be a JSON object, got {type(data).__name__}", reason="not_an_object")
        known = {"id", "instruction", "input", "references", "category", "prompt"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataFormatError(
                f"unknown record field(s) {unknown}; expected a subset of {sorted(known)}",
                field=unknown[0],
                reason="unknown_field",
            )
        for name in ("id", "instruction", "references"):
            if name not in data:
                raise DataFormatError(f"record field {name!r} is missing", field=name, reason="missing_field")
        if not isinstance(data["references"], list):
            raise DataFormatError(
                f"record field 'references' must be a list of strings, got {type(data['references']).__name__}",
                field="references",
                reason="wrong_type",
            )
        return cls(
            id=data["id"],
            instruction=data["instruction"],
            references=tuple(data["references"]),
            input=data.get("input", ""),
            category=data.get("category"),
            prompt=data.get("prompt"),
        )
