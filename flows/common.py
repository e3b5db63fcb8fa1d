"""What the pipeline and ablation flows share: the project folder, the workspace lock, running DVC stages as cached
Prefect tasks, the flow-level MLflow run, and the closing summary."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run

from switch_core.config import Config
from switch_core.layout import RunLayout
from tasks.dvc_stages import GPU_STAGES, inspect_stage, stage_group
from tasks.mlflow_tracking import MlflowRun, standard_tags, store_client, tracking_uri
from tasks.mlflow_ui import experiment_url
from tasks.prefect_tasks import run_stage
from tasks.stage_record import eval_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GPU_TAG = "gpu"
"""Concurrency tag of the stages that load a model on the accelerator: ``prefect concurrency-limit create gpu 1``
lets one of them run at a time (per accelerator), across all flow runs."""
STAGE_TAG = "switch-kd"


class WorkspaceBusyError(RuntimeError):
    """Another flow run is using the same project folder (params.yaml and dvc.lock are per workspace)."""


def project_root(project_dir: str | None) -> Path:
    """The project folder a flow works in: ``project_dir``, else the folder holding ``flows/``.

    Raises:
        FileNotFoundError: it has no params.yaml or dvc.yaml.
    """
    root = Path(project_dir).resolve() if project_dir else PROJECT_ROOT
    for name in ("params.yaml", "dvc.yaml"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root} is not a switch-kd project: {name} is missing")
    return root


@contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the project folder for the duration of a flow run.

    Raises:
        WorkspaceBusyError: another flow run holds it.
    """
    path = root / ".dvc" / "tmp" / "switch-kd-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise WorkspaceBusyError(
                f"another flow run is using {root} (lock {path}, held by: {handle.read().strip() or 'unknown'}); "
                "wait for it, or clone the project to run in parallel"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} flow run {flow_run.get_id()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Flow parameter ``overrides`` (``["optim.lr=1e-4"]`` or ``{"optim.lr": 1e-4}``) as a dict.

    Raises:
        ConfigError: an item without ``=``.
    """
    from switch_core.config import parse_override

    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(parse_override(item) for item in overrides)


def mlflow_context(config: Config, parent: MlflowRun | None) -> dict[str, Any] | None:
    """The ``mlflow`` entry of a stage task's context: None when ``tracking.backend`` is ``none``."""
    if config.tracking.backend == "none":
        return None
    return {
        "experiment": config.tracking.experiment, "uri": config.tracking.mlflow_uri,
        "parent_run_id": parent.run_id if parent else None,
    }


@contextmanager
def flow_mlflow_run(
    root: Path, config: Config, *, name: str, tags: dict[str, Any], parent: MlflowRun | None = None,
    preset: str | None = None,
) -> Iterator[MlflowRun | None]:
    """An MLflow run around a flow (or an ablation cell); None when tracking is off. Ends FAILED on an exception."""
    if config.tracking.backend == "none":
        yield None
        return
    run = MlflowRun.start(
        root, experiment=config.tracking.experiment, name=name,
        tags=standard_tags(root, preset=preset) | tags, parent_run_id=parent.run_id if parent else None,
        uri=config.tracking.mlflow_uri,
    )
    try:
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def run_stages(root: Path, names: list[str], context: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run DVC stages in order as Prefect tasks; return ``{stage: result + {"state": "Cached" | "Completed"}}`` (a
    Cached stage has ``executed`` False and no MLflow run).

    Each stage is inspected right before its task runs (its upstream has finished by then): the signature goes into
    the task's inputs (the cache key), and a stage DVC does not find up to date refreshes the cache.

    Raises:
        StageError: a stage failed (later stages are not run).
    """
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        state = inspect_stage(root, name)
        tags = [STAGE_TAG] + ([GPU_TAG] if stage_group(name) in GPU_STAGES else [])
        task_state = run_stage.with_options(refresh_cache=not state.clean, tags=tags)(
            stage=name, signature=state.signature, project_dir=str(root), context=context, return_state=True
        )
        result = task_state.result() | {"state": task_state.name}
        if task_state.name == "Cached":  # the record is the earlier run's: nothing was executed now
            result |= {"executed": False, "mlflow_run_id": None}
        results[name] = result
    return results


def model_names(config: Config) -> list[str]:
    """The evaluated models in report order: teacher, student-init, student-sft, then every run."""
    return ["teacher", "student-init", "student-sft", *config.runs]


def comparison(root: Path, config: Config) -> dict[str, dict[str, float]]:
    """``{model: eval metrics}`` (:func:`tasks.stage_record.eval_metrics`) of every evaluated model."""
    layout = RunLayout.from_config(config, root)
    return {m: eval_metrics(layout.eval_dir(m), layout.timings(layout.eval_dir(m))) for m in model_names(config) if layout.eval_dir(m).is_dir()}


def comparison_table(table: dict[str, dict[str, float]]) -> str:
    """A markdown table of ROUGE-L mean ± sd per model and benchmark."""
    benches = sorted({k.split("/")[0] for metrics in table.values() for k in metrics if k.endswith("/rouge_l")})
    lines = ["| model | " + " | ".join(f"{b} ROUGE-L" for b in benches) + " |",
             "|---|" + "---|" * len(benches)]
    for model, metrics in table.items():
        cells = [
            f"{metrics[f'{b}/rouge_l']:.2f} ± {metrics[f'{b}/rouge_l_sd']:.2f}" if f"{b}/rouge_l" in metrics else "-"
            for b in benches
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def where_things_are(root: Path, config: Config) -> str:
    """Lines naming the report, the MLflow store (how to open its UI, and the link that lands on the experiment's
    runs rather than MLflow's GenAI overview) and the DVC outputs."""
    layout = RunLayout.from_config(config, root)
    uri = tracking_uri(root, config.tracking.mlflow_uri)
    lines = [
        f"report:       {layout.report_dir / 'report.md'}",
        (f"MLflow store: {uri} (UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {uri} "
         "--workers 1 --host 127.0.0.1 --port 5000)"),
    ]
    if config.tracking.backend == "mlflow":
        found = store_client(uri).get_experiment_by_name(config.tracking.experiment)
        if found is not None:
            lines.append(f"MLflow runs:  {experiment_url('http://127.0.0.1:5000', found.experiment_id)}")
    lines.append(f"DVC outputs:  {layout.root} (dvc.lock; `dvc status`, `dvc metrics show`, `dvc plots show`)")
    return "\n".join(lines)


def log_summary(run: MlflowRun | None, table: dict[str, dict[str, float]], root: Path, config: Config) -> None:
    """Log the per-model evaluation metrics (``<model>/<benchmark>/rouge_l``...) and the report onto a flow run."""
    if run is None:
        return
    run.log_metrics({f"{model}/{k}": v for model, metrics in table.items() for k, v in metrics.items()}, step=0)
    report = RunLayout.from_config(config, root).report_dir
    if report.is_dir():
        run.log_artifact(report, "report")
