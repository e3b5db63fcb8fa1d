"""The ``switch-kd`` command line: one subcommand per pipeline stage.

DVC stages, Prefect tasks and users all call these same subcommands. Every subcommand that reads the configuration
accepts ``--params`` (default ``params.yaml``), ``--preset`` and repeatable ``--set key.path=value``; the validated
:class:`~switch_core.config.Config` reaches the command as ``args.config`` and the project root (the folder of the
params file) as ``args.project_root``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import sys
import traceback
from pathlib import Path

# Only the standard library at import time: the heavy imports (torch, transformers, a command's module) happen in
# main(), where Ctrl-C during start-up ends with one line instead of a traceback.

# (subcommand, module under switch_core.commands, one-line help); order = pipeline order.
COMMANDS: list[tuple[str, str, str]] = [
    ("prepare-data", "prepare_data", "load, validate and split the instruction data"),
    ("setup-teacher", "setup_teacher", "materialise the teacher checkpoint (embedded SmolLM2, HF, GGUF or tiny)"),
    ("build-student", "build_student", "build the student (layer-pruned teacher, HF model or fresh config)"),
    ("sft", "sft", "supervised fine-tuning of the teacher or warm-up of the student"),
    ("gate-profile", "gate_profile", "the warmed-up student's JSD to the teacher by response position"),
    ("seqkd-data", "seqkd_data", "generate the teacher's responses for SeqKD once"),
    ("distill", "distill", "run one distillation run (a method from params.yaml `runs`)"),
    ("rollout", "rollout", "SWITCH rollouts for a prompts file"),
    ("calibrate", "calibrate", "find tau0 for a target teacher share"),
    ("evaluate", "evaluate", "evaluate a model on benchmark sets"),
    ("report", "report", "tables and plots comparing evaluated models"),
    ("results-doc", "results_doc", "write docs/RESULTS.md and its plots from a run's outputs"),
    ("ablation-doc", "ablation_doc", "write docs/ABLATIONS.md and its plots from the ablations' outputs"),
    ("pipeline", "pipeline", "run every stage in order, skipping finished ones"),
    ("show-config", "show_config", "print the resolved configuration"),
]
MULTI_PROCESS = {"sft", "distill"}
"""Subcommands that re-launch themselves under ``accelerate launch`` when ``SWITCHKD_ACCELERATE_ARGS`` is set."""


_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


def help_text(docstring: str) -> str:
    """A docstring as plain help text: Sphinx roles (``:mod:`a.b```, ``:class:`~a.B```) become the bare name (the last
    part with ``~``), and double backquotes single ones."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), docstring)
    return text.replace("``", "`").strip()


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    group.add_argument("--preset", default=None, help="preset name (presets/NAME.yaml) or path, applied on top")
    group.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, e.g. --set optim.lr=1e-4 (repeatable)",
    )


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported (keeps ``--help`` fast)."""
    parser = argparse.ArgumentParser(prog="switch-kd", description=help_text(__doc__.splitlines()[0]))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, summary in COMMANDS:
        if name not in argv:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(f"switch_core.commands.{module_name}")
        p = sub.add_parser(name, help=summary, description=help_text(module.__doc__ or summary))
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        if getattr(module, "USES_CONFIG", True):
            _add_config_options(p)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def rerun_command(argv: list[str], environ: dict[str, str] | None = None) -> str:
    """The shell command that continues an interrupted ``switch-kd argv``: the same arguments without
    ``--restart`` (which would discard the training state the interrupted run saved), prefixed with
    ``SWITCHKD_ACCELERATE_ARGS=...`` in a rank of a launch with several processes (a saved state is resumed only by
    the same process count)."""
    from switch_core.processes import ACCELERATE_ARGS_ENV

    env = os.environ if environ is None else environ
    command = shlex.join(["switch-kd", *(a for a in argv if a != "--restart")])
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return command
    launch_args = env.get(ACCELERATE_ARGS_ENV, "").strip() or f"--multi_gpu --num_processes {world_size}"
    return f"{ACCELERATE_ARGS_ENV}={shlex.quote(launch_args)} {command}"


def interrupt_note(args: argparse.Namespace, command: str) -> str:
    """What an interrupted command kept and what re-running ``command`` does.

    A training command (a module with ``state_dir(args)``) names the step of its last saved state, or says that none
    was saved yet; a command with ``INTERRUPT_NOTE`` (a format string with ``{command}``) says what it keeps; any other
    keeps its finished outputs (evaluations, pipeline stages) and continues after them.
    """
    module = args._module
    if hasattr(module, "state_dir") and hasattr(args, "config"):
        from switch_core.training.state import saved_step

        step = saved_step(module.state_dir(args))
        if step is None:
            return (f"no training state was saved yet (one is saved every optim.save_every steps and at each epoch "
                    f"end): `{command}` starts over")
        return f"the training state saved at step {step} is kept: `{command}` continues from it"
    note = getattr(module, "INTERRUPT_NOTE", "finished work is kept: `{command}` continues after it")
    return note.format(command=command)


def _resolve_config(args: argparse.Namespace) -> None:
    from switch_core.config import load_config

    params = Path(args.params)
    if not params.exists() and args.params == "params.yaml":
        params = None  # schema defaults; the project root is the working directory
    args.config = load_config(params, preset=args.preset, overrides=args.overrides)
    args.project_root = (params.resolve().parent if params else Path.cwd()).resolve()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``switch-kd`` console script; returns the exit status (130 after Ctrl-C)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    try:  # start-up: imports (seconds) and argument parsing; nothing has been done yet
        from transformers.utils import logging as hf_logging

        from switch_core.processes import (
            die_with_launcher,
            end_process_group,
            is_main_rank,
            rank_exit_status,
            register_rank,
            relaunch,
            relaunch_command,
        )

        hf_logging.disable_progress_bar()  # per-shard bars drown our own progress bars
        args = build_parser(argv).parse_args(argv)
    except KeyboardInterrupt:
        print("switch-kd: interrupted during start-up; nothing was done", file=sys.stderr)
        return 130
    try:
        command = relaunch_command(argv) if args.command in MULTI_PROCESS else None
    except ValueError as err:  # SWITCHKD_ACCELERATE_ARGS that switch-kd refuses (before any process starts)
        print(f"switch-kd {args.command}: error: {err}", file=sys.stderr)
        return 2
    if command is not None:
        return relaunch(command)
    die_with_launcher()
    register_rank()
    status = 1
    try:
        status = _run(args, argv, main_rank=is_main_rank())
    finally:
        end_process_group(synchronise=status == 0)
    return rank_exit_status(status)


def _run(args: argparse.Namespace, argv: list[str], *, main_rank: bool) -> int:
    """Run the parsed command; an error or Ctrl-C is reported in one line, by the main rank only."""
    from switch_core.config import ConfigError

    try:
        if getattr(args._module, "USES_CONFIG", True):
            _resolve_config(args)
        return int(args._module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # our error classes subclass ValueError
        if not main_rank:  # every rank meets the same error; rank 0 reports it
            return 2
        if args.debug or os.environ.get("SWITCHKD_DEBUG"):
            traceback.print_exc()
        config_error = isinstance(err, ConfigError)
        print(f"switch-kd {args.command}: {'configuration error' if config_error else 'error'}: {err}", file=sys.stderr)
        if not (args.debug or config_error):  # a configuration error names the key and the fix: no traceback needed
            print(f"(switch-kd --debug {args.command} ... or SWITCHKD_DEBUG=1 shows the full traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            print(f"switch-kd {args.command}: interrupted; {interrupt_note(args, rerun_command(argv))}",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
