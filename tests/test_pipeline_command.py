"""``switch-kd pipeline``: which stages a re-run skips (each stage is replaced by a stub that writes its output)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from switch_core import cli
from switch_core.config import load_config
from switch_core.layout import RunLayout
from switch_core.stages import pipeline_stages

RUNS = {"kd": {"method": "kd"}, "switch": {"method": "switch", "overrides": {"rollout.tau0": 0.3}}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A params file (tiny preset, runs kd and switch) and the list the stub appends each stage it runs to."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": "tiny", "runs": RUNS}))
    config = load_config(params)
    stages = {s.argv: s for s in pipeline_stages(config, RunLayout.from_config(config, tmp_path))}
    ran: list[str] = []

    def stub(argv: list[str]) -> int:
        stage = next(s for a, s in stages.items() if tuple(argv[: len(a)]) == a)
        ran.append(stage.name)
        target = stage.output / "weights.bin" if stage.output.suffix == "" else stage.output
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{stage.name} {' '.join(argv)} {len(ran)}")
        if stage.name == "prepare-data":
            for split in ("train", "dev", "test"):
                (stage.output.parent / f"{split}.jsonl").write_text("{}\n")
        return 0

    run_pipeline = cli.main
    monkeypatch.setattr(cli, "main", stub)  # pipeline.run calls the stages through switch_core.cli.main

    def pipeline(*argv: str) -> list[str]:
        ran.clear()
        assert run_pipeline(["pipeline", "--params", str(params), *argv]) == 0
        return list(ran)

    return tmp_path, pipeline


def test_a_rerun_with_the_same_inputs_skips_every_stage(project) -> None:
    _, pipeline = project
    first = pipeline()
    assert first[:4] == ["prepare-data", "setup-teacher", "sft-teacher", "build-student"] and first[-1] == "report"
    assert {"distill-kd", "distill-switch", "evaluate-kd", "evaluate-switch", "seqkd-data"} - set(first) == {
        "seqkd-data"}  # no run trains on SeqKD data
    assert pipeline() == []


def test_one_runs_override_reruns_that_run_its_evaluation_and_the_report(project, capsys) -> None:
    _, pipeline = project
    pipeline()
    capsys.readouterr()
    override = "runs.switch.overrides={rollout.tau0: 0.2}"
    assert pipeline("--set", override) == ["distill-switch", "evaluate-switch", "report"]
    out = capsys.readouterr().out
    assert "distill-switch: switch-kd distill --run switch --resume-compatible (changed: " \
           "params.runs.switch.overrides.rollout.tau0 (0.3 -> 0.2))" in out
    assert "evaluate-switch: switch-kd evaluate" in out and "(changed: inputs.models/switch (stat:" in out
    assert pipeline("--set", override) == []
    assert pipeline("--set", override, "--set", "optim.lr=5e-4") == [
        "distill-kd", "distill-switch", "evaluate-kd", "evaluate-switch", "report"]


def test_a_model_retrained_by_hand_is_evaluated_again_and_reported(project) -> None:
    root, pipeline = project
    pipeline()
    weights = root / "runs" / "tiny" / "models" / "kd" / "weights.bin"
    weights.write_text("retrained by `switch-kd distill --run kd --restart`")
    assert pipeline() == ["evaluate-kd", "report"]
    assert weights.read_text().startswith("retrained")  # the hand-made model is kept
    stamps = json.loads((root / "runs" / "tiny" / "pipeline_stamps.json").read_text())
    assert stamps["distill-kd"]["params"]["runs.kd"] == {"method": "kd", "init_from": "student-sft", "overrides": {}}
    shutil.rmtree(root / "runs" / "tiny" / "eval" / "teacher")  # a missing output reruns its stage
    assert pipeline() == ["evaluate-teacher", "report"]
    assert pipeline("--force")[-1] == "report" and len(pipeline("--force")) == 14


def test_stamps_name_paths_relative_to_the_run_folder(project) -> None:
    """(so a moved project keeps them)"""
    root, pipeline = project
    pipeline()
    stamps = json.loads((root / "runs" / "tiny" / "pipeline_stamps.json").read_text())
    assert stamps["evaluate-kd"]["argv"] == ["evaluate", "--model", "models/kd", "--out", "eval/kd"]
    assert stamps["report"] == {"argv": ["report", "--models", "teacher,student-init,student-sft,kd,switch"],
                                "params": {}, "inputs": {"eval": stamps["report"]["inputs"]["eval"]}}
    assert stamps["report"]["inputs"]["eval"].startswith("stat:")


def test_a_first_override_of_a_run_names_only_the_changed_leaf(project, capsys) -> None:
    _, pipeline = project
    pipeline()
    capsys.readouterr()
    assert pipeline("--set", "runs.kd.overrides={optim.lr: 0.002}") == ["distill-kd", "evaluate-kd", "report"]
    out = capsys.readouterr().out
    assert ("distill-kd: switch-kd distill --run kd --resume-compatible (changed: "
            "params.runs.kd.overrides.optim.lr (absent -> 0.002))") in out
    assert "overrides ({} -> absent)" not in out


def test_help_names_what_make_run_runs(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "behind `make run`" not in text
    assert "`make run` runs the same stages through the Prefect flow over DVC (`python -m flows.pipeline`)" in text
