"""Run every stage in order, in this process: data -> teacher -> student -> gate profile -> SeqKD data -> distill
runs -> evaluate -> report. ``--force`` reruns everything.

A finished stage is skipped while its output exists and its stamp (in ``<run_dir>/pipeline_stamps.json``) still
matches: the stamp covers what the stage depends on, as dvc.yaml declares it (switch_core.stages), namely
  - its command line,
  - the config keys it reads (e.g. a distill run: `runs.NAME`, its method's section, `optim`, `rollout`, `data`),
  - its input files and folders in the run folder (names, sizes and modification times of their files).
So `--set runs.NAME.overrides=...` reruns only that run's training and evaluation and the report; a global setting
reruns every stage that reads it; a model retrained by hand (`switch-kd distill --run NAME --restart`) is kept and its
evaluation and the report rerun. Not covered: the library code (after changing it, use --force or `dvc repro`) and
the stage's own output (a hand-made output is kept). An interrupted pipeline continues where it stopped; each
rerun stage prints what changed.

This is the dependency-free driver (neither DVC nor Prefect needed); ``make run`` runs the same stages through the
Prefect flow over DVC (``python -m flows.pipeline``), and ``dvc repro`` runs them alone.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.dict_diff import dict_changes
from switch_core.hashing import stat_fingerprint
from switch_core.layout import RunLayout
from switch_core.stages import Stage, pipeline_stages

_SHOWN_CHANGES = 3
"""Changes named when a stage reruns (then a count of the others)."""


def _value(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of the dumped config (None when absent, e.g. a method with its default settings)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _in_run_folder(arg: str, layout: RunLayout) -> str:
    """A path argument inside the run folder relative to it (a moved project keeps its stamps), others as they are."""
    path = Path(arg)
    return path.relative_to(layout.root).as_posix() if path.is_absolute() and path.is_relative_to(layout.root) else arg


def stage_stamp(stage: Stage, config: Config, layout: RunLayout) -> dict[str, Any]:
    """What ``stage`` depends on now: its arguments, the values of its config keys and the identity
    (:func:`~switch_core.hashing.stat_fingerprint`) of its inputs; paths relative to the run folder.

    Returns:
        ``{"argv": [...], "params": {dotted key: value}, "inputs": {path: fingerprint}}`` as JSON reads it back.
    """
    values = config.model_dump(mode="json")
    stamp = {
        "argv": [_in_run_folder(arg, layout) for arg in stage.argv],
        "params": {key: _value(values, key) for key in stage.params},
        "inputs": {path.relative_to(layout.root).as_posix(): stat_fingerprint(path) for path in stage.inputs},
    }
    return json.loads(json.dumps(stamp))  # as read back from the stamps file


def _why(previous: Any, stamp: dict[str, Any]) -> str:
    """Why a stage with an output reruns: the changed stamp keys (an empty string without a usable old stamp)."""
    if not isinstance(previous, dict):
        return ""
    changes = dict_changes(previous, stamp, empty_as_absent=True)
    named = ", ".join(map(str, changes[:_SHOWN_CHANGES]))
    more = f" and {len(changes) - _SHOWN_CHANGES} more" if len(changes) > _SHOWN_CHANGES else ""
    return f" (changed: {named}{more})"


def run(args: argparse.Namespace) -> int:
    from switch_core.cli import main  # the stages run through the same CLI entry as DVC's

    layout = RunLayout.from_config(args.config, args.project_root)
    stamp_file = layout.root / "pipeline_stamps.json"
    stamps = json.loads(stamp_file.read_text()) if stamp_file.exists() and not args.force else {}
    config_args = ["--params", args.params] + (["--preset", args.preset] if args.preset else [])
    for override in args.overrides:
        config_args += ["--set", override]
    stages = pipeline_stages(args.config, layout)
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        stamp = stage_stamp(stage, args.config, layout)
        done = stage.output.exists()
        if done and stamps.get(stage.name) == stamp:
            print(f"[{i}/{len(stages)}] {stage.name}: up to date, skipped")
            continue
        why = _why(stamps.get(stage.name), stamp) if done else ""
        print(f"[{i}/{len(stages)}] {stage.name}: switch-kd {' '.join(stage.argv)}{why}", flush=True)
        t0 = time.perf_counter()
        code = main([*stage.argv, *config_args])
        if code:
            print(f"pipeline stopped at {stage.name} (exit {code}); fix the problem and re-run to continue")
            return code
        stamps[stage.name] = stamp
        atomic_write_json(stamp_file, stamps)
        print(f"[{i}/{len(stages)}] {stage.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"pipeline finished in {time.perf_counter() - start:.0f} s; outputs in {layout.root}")
    report = layout.report_dir / "report.md"
    if report.exists():
        print(report.read_text())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rerun every stage")
