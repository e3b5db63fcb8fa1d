"""tasks.mlflow_tracking: the project store, the MlflowTracker plugin, run linking through the environment."""
from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from mlflow import MlflowClient

from switch_core.config import Config, TrackingConfig, load_config
from switch_core.tracking import JsonlTracker, Tracker, TrackerError, read_jsonl_events
from tasks.mlflow_tracking import (
    ENV_FLOW_RUN_ID,
    ENV_PARENT_RUN_ID,
    ENV_PRESET,
    ENV_RUN_ID,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MlflowRun,
    MlflowTracker,
    replay_jsonl,
    sqlite_file,
    tracking_uri,
)

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with params.yaml: the MLflow store goes to <project>/mlflow.db (shared by this module's
    tests, so the sqlite schema is created once)."""
    root = tmp_path_factory.mktemp("mlflow-project")
    (root / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    for args in (["init", "-q"], ["add", "params.yaml"],
                 ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", ENV_RUN_ID, ENV_PARENT_RUN_ID, ENV_FLOW_RUN_ID, ENV_PRESET, "DVC_STAGE",
                "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)


def _client(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def test_store_is_absolute_sqlite_in_the_project_unless_overridden(project: Path, monkeypatch: pytest.MonkeyPatch):
    assert tracking_uri(project) == f"sqlite:////{str(project).lstrip('/')}/mlflow.db"  # four slashes: absolute
    assert tracking_uri(project, "http://server:5000") == "http://server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert tracking_uri(project, "http://server:5000") == "http://elsewhere:5000"


def test_tracker_records_a_stage_run(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_STAGE", "distill@switch")
    monkeypatch.setenv(ENV_PRESET, "tiny")
    monkeypatch.setenv(ENV_FLOW_RUN_ID, "flow-123")
    config = load_config(project / "params.yaml")
    checkpoint = tmp_path / "models" / "switch"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 4096)
    (checkpoint / "config.json").write_text("{}")
    small = tmp_path / "summary.json"
    small.write_text('{"ok": 1}')
    jsonl = tmp_path / "tracking" / "switch.jsonl"
    with MlflowTracker(config, name="switch", project_root=project, jsonl_path=jsonl, run_name="switch") as tracker:
        assert isinstance(tracker, Tracker)
        tracker.set_tags({"method": "switch"})
        tracker.log_params({"optim.lr": 0.123})  # the stage's own value wins over the configuration's
        tracker.log_metrics({"train/loss": 2.0}, step=1)
        tracker.log_metrics({"train/loss": 1.5, "dev/rouge_l": float("nan")}, step=2)
        tracker.log_artifact(checkpoint)
        tracker.log_artifact(small)
        run_id = tracker.run_id
    client = _client(project)
    run = client.get_run(run_id)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout
    head = head.strip()
    assert run.info.status == "FINISHED" and run.info.run_name == "distill@switch"
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["dvc.stage"] == "distill@switch"
    assert run.data.tags["preset"] == "tiny" and run.data.tags["prefect.flow_run_id"] == "flow-123"
    assert run.data.tags["method"] == "switch"
    assert run.data.params["optim.lr"] == "0.123"
    assert run.data.params["rollout.decay"] == str(config.rollout.decay)  # the rest of the configuration
    assert run.data.params["method.loss"] == config.methods["switch"].loss
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 2.0), (2, 1.5)]
    assert math.isnan(client.get_metric_history(run_id, "dev/rouge_l")[0].value)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == config.tracking.experiment
    assert experiment.artifact_location == (project / "mlartifacts").as_uri() + f"/{experiment.name}"
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for d in ("references", "config") for a in client.list_artifacts(run_id, d)
    }
    assert {"summary.json", "references/switch.json", "config/params.yaml", "config/resolved.yaml"} <= artifacts
    assert not any(path.endswith("model.safetensors") for path in artifacts)  # by reference, not copied
    reference = client.download_artifacts(run_id, "references/switch.json", str(tmp_path / "dl"))
    record = json.loads(Path(reference).read_text())
    assert record["path"] == str(checkpoint.resolve()) and record["total_bytes"] == 4096 + 2
    assert run.data.tags["ref.switch"] == str(checkpoint.resolve())
    events = read_jsonl_events(jsonl, "metrics")  # the JSONL copy the report reads
    assert [e["step"] for e in events] == [1, 2]


def test_tracker_attaches_to_a_run_created_elsewhere(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(project / "params.yaml")
    owner = MlflowRun.start(project, experiment="attach-test", name="stage")
    monkeypatch.setenv(ENV_RUN_ID, owner.run_id)
    tracker = MlflowTracker(config, name="ignored", project_root=project)
    tracker.log_metrics({"x": 1.0}, step=0)
    tracker.close()
    run = _client(project).get_run(owner.run_id)
    assert tracker.run_id == owner.run_id and run.data.metrics == {"x": 1.0}
    assert run.info.status == "RUNNING"  # the creator ends it, not the attached tracker
    owner.end()
    assert _client(project).get_run(owner.run_id).info.status == "FINISHED"


def test_parent_from_environment_nests_the_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(project / "params.yaml")
    parent = MlflowRun.start(project, experiment=config.tracking.experiment, name="study")
    monkeypatch.setenv(ENV_PARENT_RUN_ID, parent.run_id)
    with pytest.raises(RuntimeError), MlflowTracker(config, name="cell", project_root=project) as child:
        raise RuntimeError("training crashed")
    run = _client(project).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.status == "FAILED"


def test_parameters_are_immutable(project: Path) -> None:
    run = MlflowRun.start(project, experiment="immutable", name="r")
    run.log_params({"a": 1})
    run.log_params({"a": 1})  # same value again: fine
    with pytest.raises(ValueError, match="parameter 'a' is '1', cannot change it to '2'"):
        run.log_params({"a": 2})
    run.log_params({"a": 2, "b": 3}, skip_existing=True)
    assert _client(project).get_run(run.run_id).data.params == {"a": "1", "b": "3"}


def test_replay_jsonl_logs_only_events_since_the_stage_started(project: Path, tmp_path: Path) -> None:
    log = tmp_path / "teacher.jsonl"
    old = JsonlTracker(log)
    old.log_metrics({"train/loss": 9.0}, step=1)  # an earlier run appended to the same file
    time.sleep(0.05)
    since = time.time()
    time.sleep(0.05)
    old.log_params({"optim.lr": 5e-4})
    old.log_metrics({"train/loss": 3.0, "dev/ce": float("inf")}, step=1)
    old.log_metrics({"train/loss": 2.5}, step=2)
    run = MlflowRun.start(project, experiment="replay", name="sft-teacher")
    assert replay_jsonl(run, log, since=since) == 3
    client = _client(project)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train/loss")] == [(1, 3.0), (2, 2.5)]
    assert client.get_metric_history(run.run_id, "dev/ce")[0].value == sys.float_info.max  # MLflow's sqlite clamps inf
    assert client.get_run(run.run_id).data.params == {"optim.lr": "0.0005"}


def test_mlflow_backend_is_registered_as_a_tracker_plugin() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="switch_kd.trackers")}
    assert found.get("mlflow") == "tasks.mlflow_tracking:MlflowTracker", (
        "pyproject.toml needs [project.entry-points.\"switch_kd.trackers\"] mlflow = "
        "\"tasks.mlflow_tracking:MlflowTracker\" (then reinstall: make install)"
    )


_STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from switch_core.config import Config, TrackingConfig
    from tasks.mlflow_tracking import MlflowTracker
    root, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    (root / f"ready-{name}").touch()
    while len(list(root.glob("ready-*"))) < count:  # start together: the race is on creating the store
        time.sleep(0.001)
    config = Config(tracking=TrackingConfig(backend="mlflow", experiment="together"))
    with MlflowTracker(config, name=name, project_root=root) as tracker:
        tracker.log_metrics({"train/loss": 1.0}, step=1)
    print(tracker.run_id)
""")


def test_stages_starting_together_on_a_new_store_all_record_their_run(tmp_path: Path) -> None:
    """Two rounds of two stage processes on a fresh sqlite store: without the store lock MLflow's schema creation
    races (`table experiments already exists`, `duplicate column name: step`, alembic's `Online migration expected
    to match one row`) and one stage dies."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_RUN_ID, ENV_PARENT_RUN_ID)}
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    for round_ in range(2):
        root = tmp_path / f"store-{round_}"
        root.mkdir()
        names = ["a", "b"]
        procs = [subprocess.Popen([sys.executable, "-c", _STAGE, str(root), name, str(len(names))], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
        results = [proc.communicate(timeout=600) + (proc.returncode,) for proc in procs]
        for out, err, code in results:
            assert code == 0, err[-3000:]
        client = _client(root)
        experiment = client.get_experiment_by_name("together")
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _, _ in results)
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert [m.value for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")] == [1.0, 1.0]


def test_a_broken_store_is_a_one_line_tracker_error(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"this is not a sqlite database" * 100)
    config = Config(tracking=TrackingConfig(backend="mlflow", experiment="broken"))
    with pytest.raises(TrackerError) as caught:
        MlflowTracker(config, name="stage", project_root=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)  # the CLI prints ValueErrors as one line, without a traceback
    assert "\n" not in message and f"MLflow store sqlite:///{tmp_path / 'mlflow.db'} failed:" in message
    assert "MLFLOW_TRACKING_URI" in message


def test_sqlite_file_of_store_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file(f"sqlite:///{tmp_path}/a/mlflow.db") == tmp_path / "a" / "mlflow.db"
    assert sqlite_file("sqlite:///rel.db") == tmp_path / "rel.db"
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("http://server:5000") is None and sqlite_file("databricks") is None


def test_experiment_is_marked_as_model_training(project: Path) -> None:
    """MLflow 3's UI opens a GenAI experiment (or one without a kind) on its empty traces overview."""
    MlflowRun.start(project, experiment="kind-new", name="r")
    client = _client(project)
    assert client.get_experiment_by_name("kind-new").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old = client.create_experiment("kind-old")  # a store made before the tag was set
    MlflowRun.start(project, experiment="kind-old", name="r")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"


@pytest.mark.slow
def test_mlflow_ui_opens_the_experiment_on_its_runs(project: Path) -> None:
    """The link the project gives lands on the runs table, not on the empty GenAI overview (traces, token usage)."""
    from tasks.mlflow_ui import UiError, chromium, chromium_binary, experiment_url, mlflow_ui

    try:
        chromium_binary()
    except UiError:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    run = MlflowRun.start(project, experiment="landing", name="landing-run-7f3")
    run.end()
    experiment = run.client.get_run(run.run_id).info.experiment_id
    with mlflow_ui(f"sqlite:///{project / 'mlflow.db'}") as base:
        dom = chromium(experiment_url(base, experiment))
    assert "landing-run-7f3" in dom  # the runs table
    assert "Overview" not in dom and "Token Usage" not in dom  # the GenAI overview's title and panels


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (the source address of a route out), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks the route
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.slow
def test_mlflow_ui_on_a_non_loopback_address_shows_the_runs_without_the_assistant(project: Path) -> None:
    """The README screenshot's way to keep MLflow's Assistant panel out: the panel is offered to loopback clients
    only, and another host than 127.0.0.1 must be allowed (hosts, CORS) for the page to load its runs."""
    from tasks.mlflow_ui import UiError, chromium, chromium_binary, experiment_url, mlflow_ui

    try:
        chromium_binary()
    except UiError:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    run = MlflowRun.start(project, experiment="remote", name="remote-run-5c1")
    run.end()
    experiment = run.client.get_run(run.run_id).info.experiment_id
    store = f"sqlite:///{project / 'mlflow.db'}"
    with mlflow_ui(store) as base:
        local = chromium(experiment_url(base, experiment))
    with mlflow_ui(store, host=address) as base:
        assert base.startswith(f"http://{address}:")
        remote = chromium(experiment_url(base, experiment))
    assert "remote-run-5c1" in local and "remote-run-5c1" in remote
    assert "MLflow Assistant" in local and "MLflow Assistant" not in remote


def test_the_flow_summary_links_to_the_experiments_runs(tmp_path: Path) -> None:
    from flows.common import where_things_are
    from tasks.mlflow_tracking import experiment_id, store_client

    config = Config(tracking=TrackingConfig(experiment="summary-link"))
    uri = tracking_uri(tmp_path, None)
    assert "MLflow runs:" not in where_things_are(tmp_path, config)  # no experiment yet: no link to a missing page
    exp = experiment_id(store_client(uri), "summary-link", tmp_path)
    link = [line for line in where_things_are(tmp_path, config).splitlines() if line.startswith("MLflow runs:")]
    assert link == [f"MLflow runs:  http://127.0.0.1:5000/#/experiments/{exp}?workflowType=machine_learning"]
