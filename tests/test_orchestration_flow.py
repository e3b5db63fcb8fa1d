"""The Prefect flows on the tiny preset, under Prefect's test harness, in a scratch copy of the project.

One tiny chain, the same flow again in a new process (all cached), one changed parameter (only what depends on it
re-runs), then a two-cell ablation; DVC must agree after each (``dvc status`` clean, ``dvc repro`` idle), and MLflow
must hold the stage runs nested under their flow's run. The browser test opens the ablation in the MLflow UI.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from flows.ablation import ablation
from flows.common import WorkspaceBusyError, workspace_lock
from flows.pipeline import pipeline
from tasks.dvc_stages import dvc_env, pipeline_status, run_dvc, stage_names
from tasks.mlflow_tracking import ENV_FLOW_RUN_ID, ENV_PARENT_RUN_ID, ENV_PRESET, ENV_RUN_ID
from tasks.workspace import clone_workspace

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
TINY = {"preset": "tiny", "methods": ["switch"]}
CHANGE = ["methods.switch.alpha=0.2"]
GRID = {"tau0": [0.2, 0.4]}
CELLS = ["abl-tau0_0p2", "abl-tau0_0p4"]

SECOND_RUN = """
import json, sys
from prefect.testing.utilities import prefect_test_harness
from flows.pipeline import pipeline
with prefect_test_harness(server_startup_timeout=180):
    result = pipeline(preset="tiny", methods=["switch"], project_dir=sys.argv[1])
print("RESULT " + json.dumps(result["stages"]))
"""


@pytest.fixture(scope="module")
def harness() -> Any:
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, harness: Any) -> dict[str, Any]:
    """Run the flows once in a scratch project; the tests below check what happened."""
    root = clone_workspace(PROJECT, tmp_path_factory.mktemp("flows") / "project")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", ENV_RUN_ID, ENV_PARENT_RUN_ID, ENV_FLOW_RUN_ID, ENV_PRESET):
            mp.delenv(var, raising=False)
        first = pipeline(**TINY, project_dir=str(root))
        proc = subprocess.run(  # the same flow in a new process (its own flow run and harness)
            [sys.executable, "-c", SECOND_RUN, str(root)], cwd=root, env=dvc_env(), capture_output=True, text=True,
            timeout=900, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        second = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
        third = pipeline(**TINY, overrides=CHANGE, project_dir=str(root))
        status_after_third = pipeline_status(root)
        repro_after_third = run_dvc(root, ["repro"])
        abl = ablation(preset="tiny", grid=GRID, study="abl", project_dir=str(root))
    return {
        "root": root, "first": first, "second": second, "third": third, "status": status_after_third,
        "repro": repro_after_third, "ablation": abl,
    }


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


EXPECTED_CHAIN = [
    "prepare-data", "setup-teacher", "sft-teacher", "build-student", "sft-student", "gate-profile", "seqkd-data",
    "distill@switch",
    "evaluate-base@teacher", "evaluate-base@student-init", "evaluate-base@student-sft", "evaluate@switch", "report",
]


def test_first_run_executes_the_whole_chain(story: dict[str, Any]) -> None:
    first = story["first"]
    assert list(first["stages"]) == EXPECTED_CHAIN
    assert first["executed"] == EXPECTED_CHAIN
    assert set(first["stages"].values()) == {"Completed"}
    assert {"teacher", "student-init", "student-sft", "switch"} <= set(first["comparison"])
    assert "embedded/rouge_l" in first["comparison"]["switch"]


def test_second_run_in_a_new_process_is_all_cached(story: dict[str, Any]) -> None:
    assert story["second"] == {name: "Cached" for name in EXPECTED_CHAIN}


def test_changed_parameter_reruns_only_its_dependents(story: dict[str, Any]) -> None:
    third = story["third"]
    rerun = ["distill@switch", "evaluate@switch", "report"]
    assert third["executed"] == rerun
    assert {n: s for n, s in third["stages"].items() if n not in rerun} == {
        n: "Cached" for n in EXPECTED_CHAIN if n not in rerun
    }


def test_dvc_agrees_after_the_flow(story: dict[str, Any]) -> None:
    assert story["status"] == {}
    assert "Running stage" not in story["repro"]
    assert pipeline_status(story["root"]) == {}  # also after the ablation


def test_mlflow_has_stage_runs_nested_under_each_flow_run(story: dict[str, Any]) -> None:
    root = story["root"]
    mlflow = client(root)
    experiment = mlflow.get_experiment_by_name("switch-kd")
    runs = mlflow.search_runs([experiment.experiment_id], "tags.`switchkd.flow` = 'pipeline'")
    parents = {r.info.run_id: r for r in runs}
    assert story["first"]["mlflow_run_id"] in parents and story["third"]["mlflow_run_id"] in parents
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout
    head = head.strip()

    def children(parent_id: str) -> dict[str, Any]:
        found = mlflow.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return {r.data.tags["dvc.stage"]: r for r in found}

    first = children(story["first"]["mlflow_run_id"])
    assert sorted(first) == sorted(EXPECTED_CHAIN)  # every executed stage is one MLflow run
    assert sorted(children(story["third"]["mlflow_run_id"])) == ["distill@switch", "evaluate@switch", "report"]
    distill = first["distill@switch"]
    assert distill.info.status == "FINISHED"
    assert distill.data.tags["mlflow.source.git.commit"] == head
    assert distill.data.tags["preset"] == "tiny" and distill.data.tags["method"] == "switch"
    assert distill.data.tags["prefect.flow_run_id"] == parents[story["first"]["mlflow_run_id"]].data.tags[
        "prefect.flow_run_id"]
    assert distill.data.tags["dvc.out.runs/tiny/models/switch"]  # the dvc.lock md5 of its checkpoint
    assert distill.data.params["method.alpha"] == "0.1" and distill.data.params["rollout.tau0"] == "0.3"
    third_distill = children(story["third"]["mlflow_run_id"])["distill@switch"]
    assert third_distill.data.params["method.alpha"] == "0.2"
    steps = [m.step for m in mlflow.get_metric_history(distill.info.run_id, "train/loss")]
    assert steps == [2, 4]  # tiny preset: max_steps 4, log_every 2
    assert "dev/rouge_l" in distill.data.metrics and "best/dev/rouge_l" in distill.data.metrics
    evaluation = first["evaluate@switch"]
    metrics = json.loads((root / "runs/tiny/eval/switch/embedded/metrics.json").read_text())
    assert {"embedded/rouge_l", "embedded/rouge_l_sd", "embedded/bleu"} <= set(evaluation.data.metrics)
    third_eval = children(story["third"]["mlflow_run_id"])["evaluate@switch"]
    assert third_eval.data.metrics["embedded/rouge_l"] == pytest.approx(metrics["aggregate"]["rouge_l"]["mean"])
    artifacts = {a.path for a in mlflow.list_artifacts(first["report"].info.run_id, "report")}
    assert "report/report.md" in artifacts


def test_ablation_cells_are_child_flows_and_nested_runs(story: dict[str, Any]) -> None:
    abl = story["ablation"]
    assert list(abl["cells"]) == CELLS
    for cell in CELLS:
        assert abl["cells"][cell]["stages"] == {f"distill@{cell}": "Completed", f"evaluate@{cell}": "Completed"}
        metrics = abl["cells"][cell]["metrics"]
        assert "embedded/rouge_l" in metrics
        # one benchmark: its per-seed average is its own ROUGE-L; SWITCH cells trace their rollouts
        assert metrics["average/rouge_l"] == pytest.approx(metrics["embedded/rouge_l"])
        assert 0.0 <= metrics["rollout/teacher_share"] <= 100.0 and 0.0 <= metrics["average/stop_rate"] <= 100.0
    shared = {n: s for n, s in abl["stages"].items() if n != "report"}
    assert set(shared.values()) == {"Cached"} and abl["stages"]["report"] == "Completed"
    mlflow = client(story["root"])
    experiment = mlflow.get_experiment_by_name("switch-kd").experiment_id
    children = mlflow.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{abl['mlflow_run_id']}'")
    by_name = {r.info.run_name: r for r in children if r.data.tags.get("switchkd.flow") == "ablation-cell"}
    assert sorted(by_name) == CELLS
    assert sorted(r.data.tags["dvc.stage"] for r in children if "dvc.stage" in r.data.tags) == ["report"]
    assert by_name["abl-tau0_0p2"].data.params["rollout.tau0"] == "0.2"
    assert by_name["abl-tau0_0p4"].data.params["rollout.tau0"] == "0.4"
    for cell, run in by_name.items():
        for key in ("embedded/rouge_l", "average/rouge_l", "rollout/teacher_share"):
            assert run.data.metrics[key] == pytest.approx(abl["cells"][cell]["metrics"][key])
        stages = mlflow.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        assert sorted(r.data.tags["dvc.stage"] for r in stages) == [f"distill@{cell}", f"evaluate@{cell}"]
    # every cell is a DVC stage pair of its own
    assert [n for n in stage_names(story["root"]) if n.startswith("distill@")] == [f"distill@{c}" for c in CELLS]


def test_second_flow_in_the_same_workspace_is_refused(story: dict[str, Any]) -> None:
    root = story["root"]
    with workspace_lock(root), pytest.raises(WorkspaceBusyError, match="another flow run is using"):
        pipeline(**TINY, project_dir=str(root))


def test_mlflow_ui_compare_view_shows_the_ablation_cells(story: dict[str, Any], tmp_path: Path) -> None:
    from tasks.mlflow_ui import UiError, chromium_binary, screenshot_ablation

    try:
        chromium_binary()
    except UiError:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "compare.png"
    names = screenshot_ablation(f"sqlite:///{story['root'] / 'mlflow.db'}", shot, study="abl")
    assert names == CELLS
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
