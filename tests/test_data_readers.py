"""Readers: MiniLLM JSONL, raw Dolly JSONL, Hugging Face datasets (local folders), bad-row policy, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switch_core.data.readers import (
    BadRowReport,
    DataFormatError,
    load_records,
    read_dolly_raw,
    read_hf_dataset,
    read_minillm_jsonl,
)
from switch_core.data.records import InstructionRecord


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _minillm_row(i: int, **extra: object) -> dict:
    row = {
        "topic": "open_qa",
        "instruction": f"Question {i}?",
        "input": "",
        "output": f"Answer {i}.",
        "prompt": f"Header<n><n>### Instruction:<n>Question {i}?<n><n>### Response:<n>",
    }
    row.update(extra)
    return row


# ---------------------------------------------------------------------------------------------- records


def test_record_round_trip_and_reference() -> None:
    record = InstructionRecord(
        id="x-1", instruction="Do it.", references=("first", "second"), input="ctx", category="c", prompt="P"
    )
    assert record.reference == "first"
    data = record.to_dict()
    assert data == {
        "id": "x-1",
        "instruction": "Do it.",
        "input": "ctx",
        "references": ["first", "second"],
        "category": "c",
        "prompt": "P",
    }
    assert InstructionRecord.from_dict(json.loads(json.dumps(data))) == record


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"references": ()}, "references", "empty_value"),
        ({"references": ("ok", "  ")}, "references", "empty_value"),
        ({"references": ("ok", 3)}, "references", "wrong_type"),
        ({"instruction": ""}, "instruction", "empty_value"),
        ({"id": ""}, "id", "empty_value"),
        ({"category": 5}, "category", "wrong_type"),
    ],
)
def test_record_rejects_bad_fields(kwargs: dict, field: str, reason: str) -> None:
    base = {"id": "r", "instruction": "Do it.", "references": ("a",)}
    base.update(kwargs)
    with pytest.raises(DataFormatError) as info:
        InstructionRecord(**base)
    assert info.value.field == field
    assert info.value.reason == reason


def test_record_from_dict_unknown_and_missing_fields() -> None:
    with pytest.raises(DataFormatError, match="unknown record field"):
        InstructionRecord.from_dict({"id": "a", "instruction": "b", "references": ["c"], "output": "d"})
    with pytest.raises(DataFormatError, match="'references' is missing"):
        InstructionRecord.from_dict({"id": "a", "instruction": "b"})


# ---------------------------------------------------------------------------------------------- MiniLLM


def test_minillm_reader_fields_list_references_and_newlines(tmp_path: Path) -> None:
    rows = [
        _minillm_row(0),
        {"instruction": "Name two colours.", "input": "", "output": ["red, blue", "green and red"], "topic": "t"},
        {"instruction": "Vicuna question", "category": "fermi", "output": "ref", "prompt": "Q<n>A"},
    ]
    path = _write_lines(tmp_path / "dolly" / "valid.jsonl", [json.dumps(r) for r in rows])
    result = read_minillm_jsonl(path)
    first, second, third = result.records
    assert [r.id for r in result.records] == ["dolly-valid-00000", "dolly-valid-00001", "dolly-valid-00002"]
    assert first.prompt == "Header\n\n### Instruction:\nQuestion 0?\n\n### Response:\n"
    assert first.references == ("Answer 0.",) and first.category == "open_qa" and first.input == ""
    assert second.references == ("red, blue", "green and red") and second.reference == "red, blue"
    assert second.prompt is None
    assert third.category == "fermi" and third.prompt == "Q\nA"
    assert result.report.rows_read == 3 and result.report.rows_skipped == 0


def test_minillm_reader_uses_row_ids_and_ignores_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps(_minillm_row(0, id="alpha")), "", "   ", json.dumps(_minillm_row(1, id=7))]
    path = _write_lines(tmp_path / "x.jsonl", lines)
    result = read_minillm_jsonl(path)
    assert [r.id for r in result.records] == ["alpha", "7"]
    assert result.report.blank_lines == [2, 3]
    assert result.report.rows_read == 2


@pytest.mark.parametrize(
    ("bad_line", "field", "reason", "needle"),
    [
        ('{"instruction": "q", "output": ', None, "invalid_json", "not valid JSON"),
        ('["a list"]', None, "not_an_object", "JSON object"),
        ('{"instruction": "q", "input": ""}', "output", "missing_field", "missing required field 'output'"),
        ('{"instruction": "q", "output": 3}', "output", "wrong_type", "string or a list of strings"),
        ('{"instruction": 5, "output": "a"}', "instruction", "wrong_type", "must be a string"),
        ('{"instruction": "q", "output": []}', "output", "empty_value", "empty"),
        ('{"instruction": "q", "output": "a", "input": ["x"]}', "input", "wrong_type", "must be a string"),
    ],
)
def test_malformed_line_error_names_file_line_and_field(
    tmp_path: Path, bad_line: str, field: str | None, reason: str, needle: str
) -> None:
    lines = [json.dumps(_minillm_row(0)), json.dumps(_minillm_row(1)), bad_line, json.dumps(_minillm_row(3))]
    path = _write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataFormatError) as info:
        read_minillm_jsonl(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert needle in message
    assert "--set data.on_bad_rows=skip" in message  # the CLI form
    assert info.value.line == 3 and info.value.reason == reason and info.value.field == field
    if field is not None:
        assert f"field {field!r}" in message


def test_skip_mode_counts_reasons_and_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps(_minillm_row(0)),
        "not json",
        json.dumps({"instruction": "q"}),
        json.dumps(_minillm_row(3)),
        "{broken",
        json.dumps({"instruction": "q", "output": 1.5}),
        json.dumps(_minillm_row(6)),
    ]
    path = _write_lines(tmp_path / "data.jsonl", lines)
    result = read_minillm_jsonl(path, on_bad_rows="skip", id_prefix="d")
    report = result.report
    assert [r.instruction for r in result.records] == ["Question 0?", "Question 3?", "Question 6?"]
    # ids count rows, so they stay stable whether or not bad rows are skipped
    assert [r.id for r in result.records] == ["d-00000", "d-00003", "d-00006"]
    assert report.rows_read == 7 and report.rows_kept == 3 and report.rows_skipped == 4
    assert report.counts() == {"invalid_json": 2, "missing_field": 1, "wrong_type": 1}
    assert report.lines() == [2, 3, 5, 6]
    assert report.lines("invalid_json") == [2, 5]
    summary = report.summary()
    assert "3 of 7 rows kept" in summary and "invalid_json=2 (lines 2, 5)" in summary
    data = report.to_dict()
    assert data["skipped"] == 4 and data["kept"] == 3
    assert data["skipped_by_reason"] == {"invalid_json": 2, "missing_field": 1, "wrong_type": 1}
    assert [row["line"] for row in data["skipped_rows"]] == [2, 3, 5, 6]
    assert data["skipped_rows"][1]["field"] == "output"


def test_invalid_utf8_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(_minillm_row(0)).encode() + b"\n" + b'{"instruction": "\xff"}\n')
    with pytest.raises(DataFormatError, match="line 2: not UTF-8"):
        read_minillm_jsonl(path)
    assert read_minillm_jsonl(path, on_bad_rows="skip").report.counts() == {"invalid_utf8": 1}


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    lines = [json.dumps(_minillm_row(0, id="same")), json.dumps(_minillm_row(1, id="same"))]
    path = _write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataFormatError, match="line 2, field 'id': duplicate id 'same' \\(first at line 1\\)"):
        read_minillm_jsonl(path)


def test_empty_file_and_all_bad_rows_are_errors(tmp_path: Path) -> None:
    empty = _write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataFormatError, match="empty.jsonl: no records") as info:
        read_minillm_jsonl(empty)
    assert info.value.reason == "empty_source"
    blank = _write_lines(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataFormatError, match="no records"):
        read_minillm_jsonl(blank)
    bad = _write_lines(tmp_path / "bad.jsonl", ["nope", "{}"])
    with pytest.raises(DataFormatError, match="no records.*0 of 2 rows kept"):
        read_minillm_jsonl(bad, on_bad_rows="skip")
    with pytest.raises(DataFormatError, match="no such file"):
        read_minillm_jsonl(tmp_path / "missing.jsonl")


def test_bad_policy_value_is_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(_minillm_row(0))])
    with pytest.raises(ValueError, match="on_bad_rows must be 'error' or 'skip'"):
        read_minillm_jsonl(path, on_bad_rows="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- Dolly raw


def _dolly_rows() -> list[dict]:
    return [
        {
            "instruction": "When was X founded?",
            "context": "X was founded in 1901.",
            "response": "1901",
            "category": "closed_qa",
        },
        {"instruction": "Name a fruit.", "context": "", "response": "Apple.", "category": "brainstorming"},
    ]


def test_dolly_raw_reader(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "raw.jsonl", [json.dumps(r) for r in _dolly_rows()])
    records = read_dolly_raw(path, id_prefix="dolly").records
    assert records[0] == InstructionRecord(
        id="dolly-00000",
        instruction="When was X founded?",
        references=("1901",),
        input="X was founded in 1901.",
        category="closed_qa",
    )
    assert records[1].id == "dolly-00001"
    assert records[1].input == "" and records[1].prompt is None


def test_dolly_raw_missing_response_names_field(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "raw.jsonl", [json.dumps({"instruction": "q", "context": "", "category": "c"})])
    with pytest.raises(DataFormatError, match=r"raw.jsonl, line 1, field 'response': missing required field"):
        read_dolly_raw(path)


def test_rows_of_the_other_format_name_the_right_source(tmp_path: Path) -> None:
    raw = _write_lines(tmp_path / "raw.jsonl", [json.dumps(r) for r in _dolly_rows()])
    with pytest.raises(DataFormatError, match=r"field 'output': missing required field 'output' .*"
                                              r"the row has 'response', as dolly_raw data does: "
                                              r"set data.source=dolly_raw"):
        read_minillm_jsonl(raw)
    mini = _write_lines(tmp_path / "mini.jsonl", [json.dumps(_minillm_row(0))])
    with pytest.raises(DataFormatError, match=r"the row has 'output', as minillm data does: set data.source=minillm"):
        read_dolly_raw(mini)
    bare = _write_lines(tmp_path / "bare.jsonl", [json.dumps({"instruction": "q"})])
    with pytest.raises(DataFormatError) as info:
        read_minillm_jsonl(bare)
    assert "data.source" not in str(info.value)


def test_a_folder_is_read_as_its_jsonl_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "dolly"
    _write_lines(folder / "b.jsonl", [json.dumps(_minillm_row(2)), "", json.dumps(_minillm_row(3))])
    _write_lines(folder / "a.jsonl", [json.dumps(_minillm_row(0)), json.dumps(_minillm_row(1))])
    (folder / "README.md").write_text("not data")
    (folder / "sub.jsonl").mkdir()  # a folder named like a file is not read
    result = load_records("minillm", folder)
    assert [r.instruction for r in result.records] == [f"Question {i}?" for i in range(4)]
    assert [r.id for r in result.records] == [f"dolly-{i:05d}" for i in range(4)]
    assert result.report.source == str(folder) and result.report.rows_read == 4
    assert result.report.to_dict()["blank_lines"] == []  # a folder's line numbers would be ambiguous
    _write_lines(folder / "c.jsonl", [json.dumps(_minillm_row(4, id="dolly-00001"))])
    with pytest.raises(DataFormatError, match=rf"{folder / 'c.jsonl'}, line 1, field 'id': duplicate id "
                                              rf"'dolly-00001' \(first at line 2 of {folder / 'a.jsonl'}\)"):
        load_records("minillm", folder)
    skipped = load_records("minillm", folder, on_bad_rows="skip")
    assert len(skipped.records) == 4 and skipped.report.counts() == {"duplicate_id": 1}


def test_a_folder_without_jsonl_files_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.json").write_text("[]")
    with pytest.raises(DataFormatError, match=r"empty: a folder without .jsonl files \(it holds \['data.json'\]\); "
                                              r"data.path takes a .jsonl file or a folder of .jsonl files"):
        load_records("dolly_raw", tmp_path / "empty")
    with pytest.raises(DataFormatError, match="nowhere.jsonl: no such file or folder"):
        load_records("minillm", tmp_path / "nowhere.jsonl")


# ---------------------------------------------------------------------------------------------- Hugging Face


def test_hf_reader_json_folder_detects_dolly_columns(tmp_path: Path) -> None:
    folder = tmp_path / "dolly_json"
    _write_lines(folder / "train.jsonl", [json.dumps(r) for r in _dolly_rows()])
    result = read_hf_dataset(folder, split="train")
    assert [r.references for r in result.records] == [("1901",), ("Apple.",)]
    assert [r.input for r in result.records] == ["X was founded in 1901.", ""]
    assert [r.id for r in result.records] == ["dolly_json-train-00000", "dolly_json-train-00001"]
    assert result.report.source == f"{folder}[train]"


def test_hf_reader_parquet_folder_with_minillm_columns(tmp_path: Path) -> None:
    import datasets

    rows = [
        {"instruction": "A?", "input": "", "output": ["a1", "a2"], "prompt": "P<n>A", "topic": "t1"},
        {"instruction": "B?", "input": "ctx", "output": ["b1"], "prompt": "P<n>B", "topic": "t2"},
    ]
    folder = tmp_path / "mini_parquet"
    folder.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train-00000.parquet"))
    records = read_hf_dataset(folder).records
    assert records[0].references == ("a1", "a2") and records[0].prompt == "P\nA" and records[0].category == "t1"
    assert records[1].input == "ctx" and records[1].references == ("b1",)


def test_hf_reader_save_to_disk_dataset_and_dict(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(_dolly_rows())
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    assert [r.reference for r in read_hf_dataset(tmp_path / "single").records] == ["1901", "Apple."]
    assert [r.reference for r in read_hf_dataset(tmp_path / "dict", split="validation").records] == ["Apple."]
    with pytest.raises(DataFormatError, match="no split 'test'; available: \\['train', 'validation'\\]"):
        read_hf_dataset(tmp_path / "dict", split="test")


def test_hf_reader_bad_rows_unknown_columns_and_load_failures(tmp_path: Path) -> None:
    import datasets

    rows = _dolly_rows() + [{"instruction": "", "context": "", "response": "r", "category": "c"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(
        DataFormatError, match=r"bad\[train\], row 2, field 'instruction': field 'instruction' is empty"
    ):
        read_hf_dataset(tmp_path / "bad")
    skipped = read_hf_dataset(tmp_path / "bad", on_bad_rows="skip")
    assert len(skipped.records) == 2 and skipped.report.lines("empty_value") == [2]

    datasets.Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(DataFormatError, match="unknown columns \\['answer', 'question'\\]") as info:
        read_hf_dataset(tmp_path / "other")
    assert info.value.reason == "unknown_columns"

    with pytest.raises(DataFormatError, match="could not load the dataset") as info:
        read_hf_dataset(tmp_path / "does-not-exist")
    assert info.value.reason == "load_failed"
    with pytest.raises(DataFormatError, match="databricks-dolly-15k\\[train\\]: could not load the dataset"):
        read_hf_dataset("databricks/databricks-dolly-15k")  # hub name, offline in tests
    folder = tmp_path / "json_only_train"
    _write_lines(folder / "train.jsonl", [json.dumps(r) for r in _dolly_rows()])
    with pytest.raises(DataFormatError, match="could not load the dataset"):
        read_hf_dataset(folder, split="validation")


# ---------------------------------------------------------------------------------------------- load_records


def test_load_records_dispatch(tmp_path: Path) -> None:
    mini = _write_lines(tmp_path / "m.jsonl", [json.dumps(_minillm_row(0))])
    raw = _write_lines(tmp_path / "r.jsonl", [json.dumps(r) for r in _dolly_rows()])
    assert load_records("minillm", mini).records == read_minillm_jsonl(mini).records
    assert load_records("dolly_raw", raw).records == read_dolly_raw(raw).records
    embedded = load_records("embedded", embedded_size=18, seed=3)
    assert len(embedded.records) == 18 and embedded.records[0].id == "embedded-3-00000"
    assert isinstance(embedded.report, BadRowReport) and embedded.report.rows_kept == 18
    with pytest.raises(ValueError, match="takes no path"):
        load_records("embedded", mini)
    with pytest.raises(ValueError, match="needs a path"):
        load_records("minillm")
    with pytest.raises(ValueError, match="unknown data source 'csv'"):
        load_records("csv", mini)  # type: ignore[arg-type]
