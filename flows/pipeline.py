"""The ``pipeline`` flow: the whole chain (data, teacher, student, SeqKD data, one distillation per method,
evaluation of every model, report) for a preset and a list of methods.

Each stage is a Prefect task that runs the DVC stage of the same name (dvc.yaml), so ``dvc status`` is clean after a
flow run and ``dvc repro`` has nothing to do. Run it directly (a temporary local Prefect server starts when
``PREFECT_API_URL`` is not set)::

    python -m flows.pipeline --preset tiny --methods kd,switch

or through a deployment (prefect.yaml, flows/serve.py): ``prefect deployment run 'pipeline/tiny' --watch``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import (
    comparison,
    comparison_table,
    flow_mlflow_run,
    log_summary,
    mlflow_context,
    parse_overrides,
    project_root,
    run_stages,
    where_things_are,
    workspace_lock,
)
from switch_core.cli import help_text
from switch_core.config import load_config
from tasks.dvc_stages import stage_names
from tasks.prefect_tasks import apply_params_task, check_dvc_status


@flow(name="pipeline")
def pipeline(
    preset: str | None = None,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    accelerate_args: str | None = None,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """Run every stage of the switch-kd pipeline that DVC does not find up to date.

    Args:
        preset: preset applied to params.yaml first (``tiny``, or a path); None = params.yaml as it is.
        methods: runs or methods to keep in ``runs`` (e.g. ``["kd", "switch"]``); None = every configured run.
        overrides: ``["key.path=value", ...]`` applied last (``--set`` syntax).
        accelerate_args: run the training stages under ``accelerate launch <accelerate_args>``.
        project_dir: the project folder (default: the one holding this file).

    Returns:
        ``{"stages": {stage: "Cached" | "Completed"}, "executed": [...], "comparison": {model: metrics},
        "summary": the ROUGE-L table and where the report, MLflow store and DVC outputs are, "mlflow_run_id"}``.
    """
    root = project_root(project_dir)
    with workspace_lock(root):
        apply_params_task(str(root), preset, methods, parse_overrides(overrides))
        config = load_config(root / "params.yaml")
        names = stage_names(root)
        tags = {"switchkd.flow": "pipeline", "methods": ",".join(config.runs)}
        with flow_mlflow_run(root, config, name=f"pipeline {flow_run.get_name() or ''}".strip(), tags=tags,
                             preset=preset) as parent:
            if parent:
                parent.log_params({"flow.preset": preset, "flow.methods": methods, "flow.overrides": overrides})
                parent.log_config(config, root / "params.yaml")
            context = {"mlflow": mlflow_context(config, parent), "preset": preset, "accelerate_args": accelerate_args}
            results = run_stages(root, names, context)
            check_dvc_status(str(root))
            table = comparison(root, config)
            log_summary(parent, table, root, config)
        summary = f"{comparison_table(table)}\n\n{where_things_are(root, config)}"
        get_run_logger().info("%s", summary)
    return {
        "stages": {name: r["state"] for name, r in results.items()},
        "executed": [name for name, r in results.items() if r["executed"]],
        "comparison": table,
        "summary": summary,
        "mlflow_run_id": parent.run_id if parent else None,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline``: run the pipeline flow once; the flow itself logs the final table and where
    everything is (printed once)."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=help_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--preset", default=None, help="preset name (presets/NAME.yaml) or path, written to params.yaml")
    parser.add_argument("--methods", default=None, help="comma-separated runs or methods to keep (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--accelerate-args", default=None,
                        help='run the training stages under accelerate launch, e.g. "--multi_gpu --num_processes 2"')
    parser.add_argument("--project-dir", default=None, help="the project folder (default: the one holding flows/)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    pipeline(preset=args.preset, methods=methods, overrides=args.overrides or None,
             accelerate_args=args.accelerate_args, project_dir=args.project_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
