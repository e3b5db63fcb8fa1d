"""The ``ablation`` flow: a grid over SWITCH's knobs, each cell a distill + evaluate child flow.

Axes (``grid`` keys) are dotted config keys or these aliases: ``tau0`` (rollout.tau0), ``target_share``
(rollout.target_teacher_share, used when tau0 is null), ``decay`` (λ, rollout.decay), ``schedule`` (rollout.schedule),
``strategy`` (rollout.strategy), ``divergence`` (methods.<method>.loss). Every cell becomes a ``runs`` entry of
params.yaml (name ``<study>-<axis>_<value>-...``, overrides = its grid values), so each cell is a DVC stage pair
``distill@<cell>`` / ``evaluate@<cell>`` like any other run, and ``dvc repro`` reproduces the study. In MLflow the study
is a parent run, each cell a child run (grid values as params, dev/eval results as metrics) whose own children are the
stage runs: the UI's compare view of the cells shows the grid side by side. ::

    python -m flows.ablation --preset tiny --grid '{"tau0": [0.1, 0.3], "decay": [0.05, 0.2]}'

A grid may also be a committed YAML file: ``--grid presets/grids/paper-ablations.yaml:strategies`` reads the grid
named ``strategies`` of a file holding several named grids (:func:`load_grid`; a file holding one grid needs no
name). The flow's ``grid`` parameter takes the same ``path[:name]`` text, so a deployment run reproduces it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import (
    comparison,
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
from switch_core.grids import GridError, cell_overrides, grid_points
from switch_core.grids import load_grid as read_grid
from switch_core.layout import RunLayout
from tasks.dvc_stages import stage_names
from tasks.mlflow_tracking import MlflowRun
from tasks.params import ParamsError, check_run_names
from tasks.prefect_tasks import apply_params_task, check_dvc_status
from tasks.stage_record import cell_metrics, eval_metrics, train_summary_metrics

DEFAULT_GRID: dict[str, list[Any]] = {"tau0": [0.1, 0.3], "decay": [0.05, 0.2]}
"""τ0 × λ, 2 × 2 cells."""


def load_grid(spec: str, root: Path | None = None) -> dict[str, list[Any]]:
    """The grid of ``spec`` (:func:`switch_core.grids.load_grid`: JSON text or ``path[:name]`` of a YAML file,
    relative to ``root``).

    Raises:
        ParamsError: no such file, a file that is not a mapping, or a missing / unknown grid name.
    """
    try:
        return read_grid(spec, root)
    except GridError as err:
        raise ParamsError(str(err)) from None


def grid_cells(
    study: str, method: str, grid: dict[str, list[Any]], init_from: str = "student-sft"
) -> dict[str, dict[str, Any]]:
    """The ``runs`` entries of a grid: ``{cell name: {"method", "init_from", "overrides": {dotted key: value}}}``
    (names and overrides: :mod:`switch_core.grids`).

    Raises:
        ParamsError: an empty axis, a bad study name, or two cells with the same name.
    """
    check_run_names([study])
    try:
        points = grid_points(study, grid)
    except GridError as err:
        raise ParamsError(str(err)) from None
    cells = {name: {"method": method, "init_from": init_from, "overrides": cell_overrides(method, point)}
             for name, point in points.items()}
    check_run_names(list(cells))
    return cells


@flow(name="ablation-cell", flow_run_name="{cell}")
def ablation_cell(cell: str, values: dict[str, Any], project_dir: str, context: dict[str, Any]) -> dict[str, Any]:
    """One grid cell: ``distill@<cell>`` then ``evaluate@<cell>``, under the cell's MLflow run.

    Returns:
        ``{"stages": {stage: state}, "metrics": {...}}`` (dev results of training and evaluation metrics).
    """
    root = Path(project_dir)
    config = load_config(root / "params.yaml")
    parent_id = (context.get("mlflow") or {}).get("parent_run_id")
    parent = MlflowRun.attach(root, parent_id, uri=config.tracking.mlflow_uri) if parent_id else None
    tags = {"switchkd.flow": "ablation-cell", "run": cell, "method": config.runs[cell].method}
    with flow_mlflow_run(root, config, name=cell, tags=tags, parent=parent, preset=context.get("preset")) as run:
        if run:
            run.log_params({"method": config.runs[cell].method, **values})
        stage_context = context | {"mlflow": mlflow_context(config, run)}
        results = run_stages(root, [f"distill@{cell}", f"evaluate@{cell}"], stage_context)
        layout = RunLayout.from_config(config, root)
        metrics = (cell_metrics(layout, cell) | train_summary_metrics(layout.model(cell))
                   | eval_metrics(layout.eval_dir(cell), layout.timings(layout.eval_dir(cell))))
        if run:
            run.log_metrics(metrics, step=0)
    return {"stages": {name: r["state"] for name, r in results.items()}, "metrics": metrics}


@flow(name="ablation")
def ablation(
    grid: dict[str, list[Any]] | str | None = None,
    method: str = "switch",
    preset: str | None = None,
    overrides: list[str] | None = None,
    study: str = "ablation",
    init_from: str = "student-sft",
    accelerate_args: str | None = None,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """Run the shared stages, one child flow per grid cell, then the report.

    Args:
        grid: axis -> values (module docstring), or :func:`load_grid`'s ``path[:name]`` of a grid file (relative to
            the project folder); default :data:`DEFAULT_GRID`.
        method: the method whose knobs are ablated.
        preset: preset applied to params.yaml first.
        overrides: ``["key.path=value", ...]`` applied to every cell.
        study: name prefix of the cells and of the MLflow parent run.
        init_from: checkpoint the cells start from.
        accelerate_args: run the training stages under ``accelerate launch <accelerate_args>``.
        project_dir: the project folder (default: the one holding this file).

    Returns:
        ``{"cells": {cell: {"stages", "metrics"}}, "summary": the grid table and where things are,
        "stages": {shared stage: state}, "mlflow_run_id": id | None}``.

    Raises:
        ParamsError: a bad grid.
    """
    root = project_root(project_dir)
    grid = load_grid(grid, root) if isinstance(grid, str) else grid or DEFAULT_GRID
    cells = grid_cells(study, method, grid, init_from)
    with workspace_lock(root):
        apply_params_task(str(root), preset, None, parse_overrides(overrides) | {"runs": cells})
        config = load_config(root / "params.yaml")
        names = stage_names(root)
        cell_stages = {f"{group}@{cell}" for cell in cells for group in ("distill", "evaluate")}
        first = min(i for i, name in enumerate(names) if name in cell_stages)
        before = [n for n in names[:first] if n not in cell_stages]
        after = [n for n in names[first:] if n not in cell_stages]
        order = [n.partition("@")[2] for n in names if n in cell_stages and n.startswith("distill@")]
        tags = {"switchkd.flow": "ablation", "study": study, "method": method}
        name = f"ablation {study} {flow_run.get_name() or ''}".strip()
        with flow_mlflow_run(root, config, name=name, tags=tags, preset=preset) as parent:
            if parent:
                parent.log_params({"grid": grid, "method": method, "init_from": init_from, "flow.preset": preset,
                                   "flow.overrides": overrides})
                parent.log_config(config, root / "params.yaml")
            context = {"mlflow": mlflow_context(config, parent), "preset": preset, "accelerate_args": accelerate_args}
            shared = run_stages(root, before, context)
            results = {
                cell: ablation_cell(cell, cells[cell]["overrides"], str(root), context) for cell in order
            }
            shared |= run_stages(root, after, context)
            check_dvc_status(str(root))
            log_summary(parent, comparison(root, config), root, config)
        summary = f"{grid_table(cells, results)}\n\n{where_things_are(root, config)}"
        get_run_logger().info("%s", summary)
    return {
        "cells": results,
        "summary": summary,
        "stages": {n: r["state"] for n, r in shared.items()},
        "mlflow_run_id": parent.run_id if parent else None,
    }


def grid_table(cells: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per cell with its grid values and its ROUGE-L per benchmark."""
    keys = sorted({k for spec in cells.values() for k in spec["overrides"]})
    benches = sorted({
        k.split("/")[0] for r in results.values() for k in r["metrics"] if k.endswith("/rouge_l") and k.count("/") == 1
    })
    lines = ["| cell | " + " | ".join(keys + [f"{b} ROUGE-L" for b in benches]) + " |",
             "|---|" + "---|" * (len(keys) + len(benches))]
    for cell, result in results.items():
        values = [str(cells[cell]["overrides"].get(k, "")) for k in keys]
        scores = [f"{result['metrics'].get(f'{b}/rouge_l', float('nan')):.2f}" for b in benches]
        lines.append(f"| {cell} | " + " | ".join(values + scores) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ablation``: run the ablation flow once; the flow itself logs the grid table and where
    everything is (printed once)."""
    parser = argparse.ArgumentParser(prog="python -m flows.ablation", description=help_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--grid", default=None,
                        help="axis -> values as JSON, or PATH[:NAME] of a YAML grid file (e.g. "
                        "presets/grids/paper-ablations.yaml:strategies); axes: tau0, target_share, decay, schedule, "
                        f"strategy, divergence or a dotted config key (default: '{json.dumps(DEFAULT_GRID)}')")
    parser.add_argument("--method", default="switch", help="the method whose knobs are ablated (default: switch)")
    parser.add_argument("--preset", default=None, help="preset name (presets/NAME.yaml) or path, written to params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key for every cell, e.g. --set optim.max_steps=20 (repeatable)")
    parser.add_argument("--study", default="ablation", help="name prefix of the cells and the MLflow parent run")
    parser.add_argument("--init-from", default="student-sft", help="the checkpoint every cell starts from")
    parser.add_argument("--accelerate-args", default=None,
                        help='run the training stages under accelerate launch, e.g. "--multi_gpu --num_processes 2"')
    parser.add_argument("--project-dir", default=None, help="the project folder (default: the one holding flows/)")
    args = parser.parse_args(argv)
    ablation(grid=args.grid, method=args.method, preset=args.preset, overrides=args.overrides or None,
             study=args.study, init_from=args.init_from, accelerate_args=args.accelerate_args,
             project_dir=args.project_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
