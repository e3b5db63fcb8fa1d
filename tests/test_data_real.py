"""The five MiniLLM evaluation files under ../shared/data (SOURCES.md): counts, fields, prompts, references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.data.prompts import format_prompt
from switch_core.data.readers import read_minillm_jsonl
from switch_core.data.records import InstructionRecord

# file -> (rows, has a category)
EXPECTED = {
    "dolly/valid.jsonl": (500, True),
    "dolly/dev.jsonl": (1000, False),
    "self-inst/valid.jsonl": (242, True),
    "vicuna/valid.jsonl": (80, True),
    "sinst/valid.jsonl": (1694, True),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_counts_fields_and_prompts(shared_data: Path, name: str) -> None:
    rows, has_category = EXPECTED[name]
    path = shared_data / name
    result = read_minillm_jsonl(path)
    records = result.records
    assert len(records) == rows and result.report.rows_skipped == 0 and result.report.blank_lines == []
    assert len({r.id for r in records}) == rows
    assert records[0].id == f"{path.parent.name}-{path.stem}-00000"
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    for record, row in zip(records, raw, strict=True):
        assert record.instruction == row["instruction"]
        assert record.input == row.get("input", "")
        expected_refs = tuple(row["output"]) if isinstance(row["output"], list) else (row["output"],)
        assert record.references == expected_refs
        assert record.prompt == row["prompt"].replace("<n>", "\n")
        assert (record.category is not None) == has_category
        # the stored benchmark prompt is exactly the MiniLLM template (docs/METHOD.md §5.2) filled with the row
        rebuilt = InstructionRecord(
            id=record.id, instruction=record.instruction, references=record.references, input=record.input
        )
        assert format_prompt(rebuilt) == record.prompt
        assert format_prompt(record) == record.prompt


@pytest.mark.real_data
def test_real_special_cases(shared_data: Path) -> None:
    sinst = read_minillm_jsonl(shared_data / "sinst/valid.jsonl").records
    counts = [len(r.references) for r in sinst]
    assert min(counts) == 1 and max(counts) == 20 and sum(c > 1 for c in counts) > 0
    assert len({r.category for r in sinst}) == 37  # S-NI task names (SOURCES.md)
    vicuna = read_minillm_jsonl(shared_data / "vicuna/valid.jsonl").records
    assert all(r.input == "" for r in vicuna) and "fermi" in {r.category for r in vicuna}
    dolly = read_minillm_jsonl(shared_data / "dolly/valid.jsonl").records
    assert dolly[0].instruction == "When did Virgin Australia start operating?" and dolly[0].category == "closed_qa"
    assert all(r.category is None for r in read_minillm_jsonl(shared_data / "dolly/dev.jsonl").records)
