"""Prefect tasks: apply the parameters, run one pipeline stage through DVC (with its MLflow run), check DVC status.

Skip authority: DVC. ``run_stage`` is cached by its inputs (stage name, project folder, and the stage's *signature*,
see :mod:`tasks.dvc_stages`), with results persisted, so a re-run with unchanged inputs is shown as Cached, also in a
new flow run and a new process. The flow passes ``refresh_cache=True`` whenever DVC does not find the stage up to date
(outputs deleted, dvc.lock from another configuration), so a Prefect cache hit never hides work DVC wants done. Tasks
pass paths, parameters and hashes only, never live models.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NONE

from switch_core.config import load_config
from tasks.dvc_stages import (
    TRAINING_STAGES,
    StageError,
    inspect_stage,
    lock_entry,
    out_hashes,
    pipeline_status,
    repro_stage,
    stage_group,
)
from tasks.mlflow_tracking import ENV_FLOW_RUN_ID, ENV_PRESET, ENV_RUN_ID, MlflowRun, prefect_flow_run_id, standard_tags
from tasks.params import ParamsUpdate, apply_params
from tasks.stage_record import record_stage, stage_tags

ACCELERATE_ENV = "SWITCHKD_ACCELERATE_ARGS"
"""Environment variable read by ``switch-kd`` training commands: when set, they relaunch themselves under
``accelerate launch <args>`` (e.g. ``--multi_gpu --num_processes 2``)."""


@task(name="apply-params", cache_policy=NONE)
def apply_params_task(
    project_dir: str, preset: str | None, methods: list[str] | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """Materialise ``preset`` / ``methods`` / ``overrides`` into ``<project_dir>/params.yaml`` (see
    :mod:`tasks.params`); return ``{"changes": {...}}``.

    Raises:
        ConfigError, ParamsError: the result does not validate.
    """
    update: ParamsUpdate = apply_params(Path(project_dir) / "params.yaml", preset=preset, methods=methods,
                                        overrides=overrides)
    logger = get_run_logger()
    for key, value in update.changes.items():
        logger.info("params.yaml: %s = %r", key, value)
    if not update.changes:
        logger.info("params.yaml already gives the requested configuration")
    return {"changes": update.changes}


@task(
    name="stage",
    task_run_name="{stage}",
    cache_policy=INPUTS - "context",
    persist_result=True,
    result_serializer="json",
)
def run_stage(stage: str, signature: str, project_dir: str, context: dict[str, Any]) -> dict[str, Any]:
    """Run DVC stage ``stage`` (``dvc repro --single-item``) unless DVC finds it up to date; open its MLflow run.

    Args:
        stage: DVC stage address (``distill@switch``).
        signature: the stage's signature when the flow inspected it (part of the cache key).
        project_dir: the project folder (part of the cache key).
        context: not part of the cache key: ``mlflow`` (``None`` or ``{"experiment", "uri", "parent_run_id"}``),
            ``preset`` (tag), ``accelerate_args`` (training stages run under ``accelerate launch`` with them).

    Returns:
        ``{"stage", "signature", "executed", "outs": {path: md5}, "mlflow_run_id"}``.

    Raises:
        StageError: the stage's inputs changed since the flow inspected it, or its command failed.
    """
    root = Path(project_dir)
    logger = get_run_logger()
    state = inspect_stage(root, stage)
    if state.signature != signature:
        raise StageError(f"{stage}: its inputs changed after the flow inspected them (another process edits {root}?)")
    result: dict[str, Any] = {"stage": stage, "signature": signature, "executed": False, "mlflow_run_id": None}
    if state.clean:
        logger.info("%s is up to date in DVC; nothing to run", stage)
        return result | {"outs": out_hashes(lock_entry(root, stage))}
    config = load_config(root / "params.yaml")
    env: dict[str, str] = {}
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        env[ENV_FLOW_RUN_ID] = flow_run_id
    if context.get("preset"):
        env[ENV_PRESET] = str(context["preset"])
    if context.get("accelerate_args") and stage_group(stage) in TRAINING_STAGES:
        env[ACCELERATE_ENV] = str(context["accelerate_args"])
    mlflow_ctx = context.get("mlflow")
    run = None
    if mlflow_ctx:
        tags = standard_tags(root, stage=stage, preset=context.get("preset")) | stage_tags(stage, config, signature)
        run = MlflowRun.start(
            root, experiment=mlflow_ctx["experiment"], name=stage, tags=tags,
            parent_run_id=mlflow_ctx.get("parent_run_id"), uri=mlflow_ctx.get("uri"),
        )
        env[ENV_RUN_ID] = run.run_id
        result["mlflow_run_id"] = run.run_id
    started = time.time()
    try:
        output = repro_stage(root, stage, env)
        logger.info("%s", output.strip()[-3000:])
        if run:
            outs = record_stage(run, root, stage, config, started=started, dvc_output=output)
        else:
            outs = out_hashes(lock_entry(root, stage))
    except BaseException as err:
        if run:
            run.client.log_text(run.run_id, str(err), "failure.txt")  # DVC's output tail, for the UI
            run.end("FAILED")
        raise
    if run:
        run.end("FINISHED")
    return result | {"executed": True, "outs": outs}


@task(name="dvc-status", cache_policy=NONE)
def check_dvc_status(project_dir: str) -> dict[str, Any]:
    """``dvc status`` of the whole pipeline after a flow run.

    Raises:
        StageError: DVC reports changes (the flow and DVC disagree), naming the stages.
    """
    status = pipeline_status(project_dir)
    if status:
        raise StageError(f"after the flow run, `dvc status` in {project_dir} still reports changes: {status}")
    get_run_logger().info("dvc status: data and pipelines are up to date")
    return status

