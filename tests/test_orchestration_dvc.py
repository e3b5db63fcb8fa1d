"""dvc.yaml: the stages DVC resolves, their code dependencies, params and signatures (no stage is run here)."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest
import yaml

from switch_core.config import flatten, load_config
from tasks.code_deps import OBSERVABILITY_ONLY, expand_deps, import_closure
from tasks.dvc_stages import StageError, inspect_stage, stage_names
from tasks.params import apply_params
from tasks.workspace import clone_workspace

PROJECT = Path(__file__).resolve().parents[1]

COMMAND_OF_GROUP = {
    "prepare-data": "prepare_data", "setup-teacher": "setup_teacher", "sft-teacher": "sft", "build-student":
    "build_student", "sft-student": "sft", "gate-profile": "gate_profile", "seqkd-data": "seqkd_data", "distill": "distill", "evaluate-base":
    "evaluate", "evaluate": "evaluate", "report": "report",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch git copy of the project (DVC reads its dvc.yaml and params.yaml; nothing is run)."""
    return clone_workspace(PROJECT, tmp_path_factory.mktemp("dvc") / "ws")


def _stages(root: Path) -> dict[str, object]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: s for s in repo.index.stages}


def test_default_pipeline_stages_in_dependency_order(workspace: Path) -> None:
    runs = list(load_config(workspace / "params.yaml").runs)
    expected = (
        ["prepare-data", "setup-teacher", "sft-teacher", "build-student", "sft-student", "gate-profile", "seqkd-data"]
        + [f"distill@{r}" for r in runs]
        + ["evaluate-base@teacher", "evaluate-base@student-init", "evaluate-base@student-sft"]
        + [f"evaluate@{r}" for r in runs]
        + ["report"]
    )
    assert stage_names(workspace) == expected


def _dvc_name(pipeline_name: str, runs: list[str]) -> str:
    """The dvc.yaml stage of a ``switch-kd pipeline`` stage: ``distill-kd`` -> ``distill@kd``, ``evaluate-teacher``
    -> ``evaluate-base@teacher``, ``evaluate-kd`` -> ``evaluate@kd``."""
    for group in ("distill", "evaluate"):
        item = pipeline_name.removeprefix(f"{group}-")
        if item != pipeline_name:
            return f"{group}@{item}" if group == "distill" or item in runs else f"evaluate-base@{item}"
    return pipeline_name


def test_pipeline_command_and_dvc_yaml_declare_the_same_stage_graph(workspace: Path) -> None:
    """``switch-kd pipeline`` (make run) and dvc.yaml declare the stages twice: same stages, commands, outputs, params,
    run-folder dependencies, and an order that respects every dependency DVC sees. (dvc.yaml always has sft-student, seqkd-data and
    evaluate-base@student-sft; the default params.yaml uses all three, so the two lists must be equal.)"""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from switch_core.layout import RunLayout
    from switch_core.stages import pipeline_stages

    config = load_config(workspace / "params.yaml")
    runs = list(config.runs)
    layout = RunLayout.from_config(config, workspace)
    ours = {_dvc_name(stage.name, runs): stage for stage in pipeline_stages(config, layout)}
    order = list(ours)
    with Repo(str(workspace)) as repo:
        dvc = {stage.name: stage for stage in repo.index.stages}
        edges = [(dep.name, stage.name) for stage, dep in repo.index.graph.edges]
    assert order == [n for n in stage_names(workspace) if n in ours] and set(ours) == set(dvc)
    assert all(order.index(first) < order.index(then) for first, then in edges)
    for name, stage in ours.items():
        command = dvc[name].cmd.split()
        if stage.argv[0] == "evaluate":
            assert command[-1] == "--quiet"  # DVC logs stay short; the pipeline shows progress
            command = command[:-1]
        if stage.argv[0] == "report":  # the one known difference: the pipeline also fixes the models' order
            assert stage.argv[1:] == ("--models", ",".join(["teacher", "student-init", "student-sft", *runs]))
            command += list(stage.argv[1:])
        def paths_resolved(args: list[str]) -> list[str]:  # DVC runs in the workspace; the pipeline passes paths
            return [str((workspace / a).resolve()) if "/" in a else a for a in args]

        assert paths_resolved(command) == paths_resolved(["switch-kd", *stage.argv]), name
        outs = [workspace / out.def_path for out in dvc[name].outs]
        assert any(stage.output == out or out in stage.output.parents for out in outs), (name, stage.output, outs)
        # what the pipeline's stamps cover: the same params and run-folder deps (the pipeline reads the SeqKD data
        # only in a run that trains on it)
        params = {key for dep in dvc[name].deps if isinstance(dep, ParamsDependency) for key in dep.params}
        assert set(stage.params) == params, name
        inputs = {(workspace / d.def_path).resolve() for d in dvc[name].deps
                  if not isinstance(d, ParamsDependency) and not d.def_path.startswith("switch_core")}
        if stage.argv[0] == "distill" and layout.seqkd_data not in stage.inputs:
            inputs.discard(layout.seqkd_data.resolve())
        assert {p.resolve() for p in stage.inputs} == inputs, name


def test_preset_and_chained_runs_reach_dvc_templating(tmp_path: Path) -> None:
    root = clone_workspace(PROJECT, tmp_path / "ws")
    # "lo" is listed first but starts from "hi": DVC's graph must order hi first
    apply_params(root / "params.yaml", preset="tiny", overrides={"runs": {
        "lo": {"method": "switch", "init_from": "hi", "overrides": {"rollout.tau0": 0.1}},
        "hi": {"method": "switch", "init_from": "student-sft", "overrides": {"rollout.tau0": 0.4}},
    }})
    names = stage_names(root)
    assert names.index("distill@hi") < names.index("distill@lo")
    assert [n for n in names if n.startswith("distill@")] == ["distill@hi", "distill@lo"]
    stage = _stages(root)["distill@lo"]
    deps = {d.def_path for d in stage.deps if not hasattr(d, "read_params")}
    assert "runs/tiny/models/hi" in deps and "runs/tiny/models/teacher" in deps
    assert [o.def_path for o in stage.outs] == ["runs/tiny/models/lo"]
    assert stage.cmd == "switch-kd distill --run lo --resume-compatible"


def test_code_dependencies_cover_each_commands_import_closure(workspace: Path) -> None:
    for name, stage in _stages(workspace).items():
        group = name.partition("@")[0]
        declared = [d.def_path for d in stage.deps if not hasattr(d, "read_params")]
        code = [d for d in declared if d.startswith("switch_core")]
        assert all((workspace / d).exists() for d in code), f"{name}: a declared code dependency does not exist"
        closure = import_closure(workspace, f"switch_core.commands.{COMMAND_OF_GROUP[group]}")
        needed = {p for p in closure - OBSERVABILITY_ONLY if (workspace / p).stat().st_size > 0}
        missing = needed - expand_deps(workspace, code)
        assert not missing, f"dvc.yaml stage {name} misses code dependencies {sorted(missing)} (stale models risk)"


def test_every_declared_param_exists_in_params_yaml(workspace: Path) -> None:
    from dvc.dependency.param import ParamsDependency

    raw = flatten(yaml.safe_load((workspace / "params.yaml").read_text()))
    for name, stage in _stages(workspace).items():
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                for key in dep.params:
                    assert key in raw or any(k.startswith(key + ".") for k in raw), f"{name}: params key {key} missing"


def test_params_yaml_lists_every_configuration_key() -> None:
    # `dvc exp run -S key=value` can only set keys present in params.yaml, and DVC tracks only those
    raw = flatten(yaml.safe_load((PROJECT / "params.yaml").read_text()))
    resolved = flatten(load_config(PROJECT / "params.yaml").model_dump())
    missing = sorted(k for k in resolved if k not in raw and not any(r.startswith(k + ".") for r in raw))
    assert not missing, f"params.yaml lacks keys {missing}: regenerate it from the schema"


def test_signature_follows_exactly_the_stage_inputs(tmp_path: Path) -> None:
    root = clone_workspace(PROJECT, tmp_path / "ws")
    apply_params(root / "params.yaml", preset="tiny", methods=["kd", "switch"])
    names = ["prepare-data", "distill@kd", "distill@switch", "evaluate@switch"]
    before = {n: inspect_stage(root, n) for n in names}
    assert not any(s.clean for s in before.values())  # nothing has run
    assert before["distill@switch"].params["methods.switch"]["alpha"] == 0.1
    apply_params(root / "params.yaml", overrides=["methods.switch.alpha=0.3"])
    after = {n: inspect_stage(root, n) for n in names}
    changed = {n for n in names if after[n].signature != before[n].signature}
    assert changed == {"distill@switch"}
    with (root / "switch_core" / "commands" / "distill.py").open("a") as handle:
        handle.write("\n# a code change\n")
    again = {n: inspect_stage(root, n) for n in names}
    assert {n for n in names if again[n].signature != after[n].signature} == {"distill@kd", "distill@switch"}


def test_unknown_stage_is_a_clear_error(workspace: Path) -> None:
    with pytest.raises(StageError, match="distill@nope"):
        inspect_stage(workspace, "distill@nope")


def test_dvc_config_turns_analytics_off_and_links_the_cache() -> None:
    parser = configparser.ConfigParser()
    parser.read(PROJECT / ".dvc" / "config")
    assert parser["core"]["analytics"] == "false"
    assert parser["cache"]["type"].strip('"').split(",")[:2] == ["reflink", "hardlink"]


def test_params_yaml_survives_dvc_exp_run_set_param(tmp_path: Path) -> None:
    # `dvc exp run -S key=value` re-dumps params.yaml as YAML 1.2 (ruamel): a quoted 'no' comes back bare, which YAML
    # 1.1 (PyYAML) reads as False. switch_core must read what DVC writes.
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    before = load_config(params)
    apply_overrides(str(params), ["seed=7"])  # what `dvc exp run -S seed=7` does to the file
    after = load_config(params)
    assert after.seed == 7
    assert after.model_dump() == before.model_dump() | {"seed": 7}


def _output_hashes(root: Path) -> dict[str, str]:
    """``{output path: md5}`` of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.mark.slow  # the tiny pipeline twice (a few minutes on 2 busy cores)
def test_a_forced_rerun_records_the_same_output_hashes(tmp_path: Path) -> None:
    """Outputs hold no timings (issue 17, item 8): re-running every stage from scratch gives the same hashes."""
    import shutil

    from tasks.dvc_stages import run_dvc

    root = clone_workspace(PROJECT, tmp_path / "ws")
    apply_params(root / "params.yaml", preset="tiny", methods=["kd", "switch"])
    run_dvc(root, ["repro"])
    first = _output_hashes(root)
    for untracked in ("state", "timings", "tracking"):  # nothing of the first run may be reused
        shutil.rmtree(root / "runs" / "tiny" / untracked, ignore_errors=True)
    run_dvc(root, ["repro", "--force"])
    second = _output_hashes(root)
    assert "runs/tiny/models/switch" in first and "runs/tiny/eval/switch" in first and "runs/tiny/seqkd" in first
    assert second == first
    assert (root / "runs" / "tiny" / "timings" / "eval" / "switch" / "embedded" / "timings.json").is_file()
