"""Write docs/RESULTS.md (and its plots, in docs/results/) from a run's outputs: ``switch-kd results-doc``.

Everything in the document comes from the run folder (evaluations, data report, training summaries, SWITCH traces
and logs; see :mod:`switch_core.reporting.results_md`) and from the configuration (the expected models, benchmarks
and runs, and each run's method settings). Missing outputs are listed, so the command also works while a study is
still running. The git commit is read from the project's checkout (``--commit`` to give it, e.g. when the run was
made in another workspace); the commands are given with ``--command`` (repeatable) or reconstructed from the run
folder; ``--note`` adds a remark of whoever ran the study (shown as such, apart from the generated text).
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from switch_core.config import ROLLOUT_DATA, Config
from switch_core.git_info import CODE_PATHS, git_commit
from switch_core.layout import RunLayout
from switch_core.reporting.method_text import describe_run, describe_sft_stages
from switch_core.reporting.results_md import write_results_doc
from switch_core.reporting.run_outputs import writes_rollout_traces
from switch_core.stages import evaluated_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=None, help="the run folder (default: the configuration's run_dir); a "
                        "relative path is taken from the project folder, the folder of --params")
    parser.add_argument("--out", default="docs/RESULTS.md", help="markdown file; plots go to <its folder>/results/ "
                        "(a relative path is taken from the project folder, the folder of --params)")
    parser.add_argument("--commit", default=None, help="git commit of the code that made the run (default: HEAD of "
                        "the project's checkout, marked when it has uncommitted changes)")
    parser.add_argument("--command", dest="commands", action="append", default=None, metavar="CMD",
                        help="a command that produced the run, shown verbatim (repeatable; default: reconstructed)")
    parser.add_argument("--title", default=None, help="the document's first heading (default: 'Results: the PRESET "
                        "study' with --preset, else 'Results')")
    parser.add_argument("--note", dest="notes", action="append", default=[], metavar="TEXT",
                        help="a remark of whoever ran the study (e.g. machine conditions), shown under Provenance as "
                        "an operator's note (repeatable)")


def reconstructed_commands(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The commands that most likely made the run: ``switch-kd pipeline`` when its stamps are in the run folder,
    else ``dvc repro`` when the project has a dvc.lock; then this command itself."""
    config_args = (["--preset", args.preset] if args.preset else []) + [
        part for override in args.overrides for part in ("--set", override)
    ]
    commands = []
    if (run_dir / "pipeline_stamps.json").is_file():
        commands.append(shlex.join(["switch-kd", "pipeline", *config_args]))
    elif (Path(args.project_root) / "dvc.lock").is_file():
        commands.append("dvc repro")
    own = ["switch-kd", "results-doc", *config_args, "--out", args.out]
    if args.run_dir:
        own += ["--run-dir", args.run_dir]
    return [*commands, shlex.join(own)]


def _trained(config: Config) -> list[str]:
    return (["teacher"] if config.teacher.sft else []) + (["student-sft"] if config.student.warmup else [])


def _decays(config: Config) -> dict[str, float]:
    """λ of each SWITCH run with an exponential threshold schedule (its overrides applied)."""
    decays = {}
    for name, spec in config.runs.items():
        rollout = config.run_config(name).rollout
        if spec.method == "switch" and rollout.schedule == "exponential":
            decays[name] = rollout.decay
    return decays


def _schedules(config: Config) -> dict[str, dict[str, Any]]:
    """Threshold schedule of each SWITCH run (its overrides applied; ``tau0`` None when calibrated)."""
    out = {}
    for name, spec in config.runs.items():
        rollout = config.run_config(name).rollout
        if spec.method == "switch":
            out[name] = rollout.model_dump(include={"schedule", "decay", "horizon", "max_new_tokens", "tau0"})
    return out


def _rollout_training(config: Config) -> dict[str, dict[str, Any]]:
    """``{"data", "supervise_stop"}`` of each run whose method trains on rollouts (its overrides applied)."""
    methods = {name: config.method_config(name) for name in config.runs}
    return {name: {"data": m.data, "supervise_stop": m.supervise_stop} for name, m in methods.items()
            if m.data in ROLLOUT_DATA}


def _traced(config: Config) -> list[str]:
    """The SWITCH runs whose training writes rollout traces (their method's data and rollout strategy)."""
    out = []
    for name, spec in config.runs.items():
        method = config.method_config(name)
        if spec.method == "switch" and writes_rollout_traces(
                method.data, method.rollout_strategy or config.run_config(name).rollout.strategy):
            out.append(name)
    return out


def run(args: argparse.Namespace) -> int:
    root = Path(args.project_root)
    config: Config = args.config
    layout = RunLayout.from_config(config, root)
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else layout.root
    run_dir = run_dir if run_dir.is_absolute() else (root / run_dir).resolve()
    out = Path(args.out).expanduser()
    out = out if out.is_absolute() else root / out
    commands = args.commands or reconstructed_commands(args, run_dir)
    note = None if args.commands else "(Reconstructed from the run folder; `--command` records the exact ones.)"
    head = git_commit(root, CODE_PATHS)
    code_root = Path(__file__).resolve().parents[2]  # the checkout whose switch_core writes the document
    code = git_commit(code_root, ("switch_core",))
    title = args.title or (f"Results: the {Path(args.preset).stem} study" if args.preset else "Results")
    descriptions = describe_sft_stages(config) | {name: describe_run(config, name) for name in config.runs}
    doc = write_results_doc(
        run_dir, out, commands=commands, commit=args.commit or head, models=evaluated_models(config),
        benchmarks=config.eval.benchmarks, methods={name: r.method for name, r in config.runs.items()},
        trained=_trained(config), target_share=config.rollout.target_teacher_share, decays=_decays(config),
        schedules=_schedules(config), rollout_training=_rollout_training(config),
        traced=_traced(config),
        run_label=args.run_dir or config.run_dir, title=title, commands_note=note, notes=args.notes,
        method_descriptions=descriptions, generated_with=code,
    )
    print(f"results: {doc.markdown}")
    print(f"plots: {', '.join(str(p) for p in doc.plots) or 'none yet'}")
    if doc.missing:
        print(f"missing ({len(doc.missing)}): " + "; ".join(doc.missing))
    return 0
