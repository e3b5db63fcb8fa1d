"""tasks.params: presets, run selection and overrides materialised into params.yaml (what DVC templating reads)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

import flows.ablation
import flows.pipeline
import tasks.params
from switch_core.config import ConfigError, load_config
from tasks.params import (
    ParamsError,
    _float_text,
    apply_params,
    check_run_names,
    diff_config,
    render_params,
    select_runs,
)

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A folder with a copy of params.yaml and presets/."""
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT / "presets", tmp_path / "presets")
    return tmp_path


def test_preset_is_materialised_and_idempotent(project: Path) -> None:
    params = project / "params.yaml"
    original = params.read_text()
    expected = load_config(params, preset="tiny").model_dump() | {"preset": None}
    update = apply_params(params, preset="tiny")
    text = params.read_text()
    assert load_config(params).model_dump() == expected
    assert yaml.safe_load(text)["preset"] is None
    assert update.changes["run_dir"] == "runs/tiny" and update.changes["teacher.source"] == "tiny"
    assert update.changes["optim.lr"] == 1e-3 and update.changes["optim.max_steps"] == 4
    assert "optim.weight_decay" not in update.changes and "seed" not in update.changes  # untouched by the preset
    # comments and untouched lines survive the round trip
    first_comment = next(line for line in original.splitlines() if line.startswith("#"))
    assert first_comment in text.splitlines()
    assert "seed: 0" in text.splitlines()
    # applying the same preset again changes nothing, byte for byte
    again = apply_params(params, preset="tiny")
    assert again.changes == {} and params.read_text() == text


def test_overrides_apply_last_and_survive_both_yaml_readers(project: Path) -> None:
    params = project / "params.yaml"
    apply_params(params, preset="tiny", overrides=["optim.lr=1e-05", "rollout.schedule=linear"])
    text = params.read_text()
    for data in (yaml.safe_load(text), YAML(typ="safe").load(text)):  # switch_core's and DVC's readers
        assert data["optim"]["lr"] == 1e-05 and isinstance(data["optim"]["lr"], float)
        assert data["rollout"]["schedule"] == "linear"
    assert load_config(params).optim.lr == 1e-05


def test_ambiguous_strings_are_quoted(project: Path) -> None:
    params = project / "params.yaml"
    apply_params(params, overrides={"optim.mixed_precision": "bf16"})
    apply_params(params, overrides={"optim.mixed_precision": "no"})  # YAML 1.1 would read a bare no as False
    assert yaml.safe_load(params.read_text())["optim"]["mixed_precision"] == "no"
    assert load_config(params).optim.mixed_precision == "no"


def test_methods_select_runs_in_the_raw_file(project: Path) -> None:
    params = project / "params.yaml"
    update = apply_params(params, methods=["switch", "minillm"])
    raw = yaml.safe_load(params.read_text())["runs"]
    assert raw == {
        "switch": {"method": "switch", "init_from": "student-sft", "overrides": {}},
        "minillm": {"method": "minillm", "init_from": "student-sft", "overrides": {}},
    }
    assert set(update.changes) == {"runs"}


def test_select_runs_keeps_chains_and_rejects_unknown_names() -> None:
    config = load_config(None, overrides={
        "runs": {
            "hi": {"method": "switch", "overrides": {"rollout.tau0": 0.4}},
            "lo": {"method": "switch", "init_from": "hi", "overrides": {"rollout.tau0": 0.1}},
            "kd": {"method": "kd"},
        }
    })
    assert list(select_runs(config, ["lo"])) == ["hi", "lo"]  # lo starts from hi
    assert list(select_runs(config, ["kd"])) == ["kd"]
    with pytest.raises(ParamsError, match="'swich' is neither a run nor a method"):
        select_runs(config, ["swich"])
    with pytest.raises(ParamsError, match="at least one"):
        select_runs(config, [])


def test_run_names_must_be_dvc_stage_keys(project: Path) -> None:
    check_run_names(["switch", "abl-tau0_0p1"])
    with pytest.raises(ParamsError, match=r"no dots"):
        check_run_names(["tau0.1"])
    with pytest.raises((ParamsError, ConfigError), match="a.b"):
        apply_params(project / "params.yaml", overrides={"runs": {"a.b": {"method": "kd"}}})


def test_invalid_result_is_not_written(project: Path) -> None:
    params = project / "params.yaml"
    before = params.read_text()
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_params(params, overrides=["optim.lr=-1"])
    assert params.read_text() == before


def test_dry_run_does_not_write(project: Path) -> None:
    params = project / "params.yaml"
    before = params.read_text()
    update = apply_params(params, preset="tiny", dry_run=True)
    assert update.changes and params.read_text() == before


def test_diff_config_hand_computed() -> None:
    base = {"a": 1, "s": {"x": 1, "y": 2}, "r": {"k": {"m": 1}, "j": {"m": 2}}, "e": {}}
    target = {"a": 1, "s": {"x": 1, "y": 3}, "r": {"k": {"m": 1}}, "e": {}, "n": [1]}
    # s.y changed; r lost a key so it is written whole; n is new
    assert diff_config(base, target) == {"s.y": 3, "r": {"k": {"m": 1}}, "n": [1]}
    assert diff_config({"a": 1}, {"a": 1.0}) == {"a": 1.0}  # a type change is a change


def test_render_keeps_formatting_and_creates_sections() -> None:
    text = "# top\nseed: 0   # the seed\noptim:\n  lr: 5.0e-05\n"
    out = render_params(text, {"optim.lr": 1e-05, "new.key": None})
    assert out.splitlines()[:2] == ["# top", "seed: 0   # the seed"]
    assert yaml.safe_load(out) == {"seed": 0, "optim": {"lr": 1e-05}, "new": {"key": None}}
    with pytest.raises(ParamsError, match="seed is a value"):
        render_params(text, {"seed.x": 1})


@pytest.mark.parametrize(
    ("value", "text"), [(1e-05, "1.0e-05"), (0.5, "0.5"), (3e20, "3.0e+20"), (1.5e-07, "1.5e-07"), (2.0, "2.0")]
)
def test_float_text_reads_back_in_yaml_1_1_and_1_2(value: float, text: str) -> None:
    assert _float_text(value) == text
    assert yaml.safe_load(text) == value and YAML(typ="safe").load(text) == value


# imported at collection: Prefect's import sets up logging on the streams of that moment, not on a test's capture
@pytest.mark.parametrize("module", [tasks.params, flows.pipeline, flows.ablation], ids=lambda m: m.__name__)
def test_entry_point_help_is_plain_text_and_documents_every_option(module, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "``" not in out and ":mod:" not in out
    options = out.split("options:", 1)[1]
    # every option line has a help text (an option alone on its line is followed by its indented help)
    lines = [line for line in options.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("  -") and len(line.split(None, 2)) <= 2 and line.strip().count(" ") <= 1:
            assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 8), f"{module}: no help for {line.strip()}"
