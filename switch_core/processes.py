"""Processes and devices: the one place switch-kd creates accelerate's process state, and the re-launch of a
training command under ``accelerate launch``.

accelerate 1.15 decides whether a launch is distributed in ``PartialState._prepare_backend``: without an accelerator
(no CUDA, XPU, ...) it sets up gloo ranks only when ``cpu=True`` is passed, and otherwise treats every rank of
``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) as a lone main process, so each rank trains on
its own and writes the same checkpoint. switch-kd therefore always builds the state with ``cpu`` = "no accelerator
here", on every code path (training loop, trackers, SeqKD generation).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

import torch
from accelerate import Accelerator, PartialState

ACCELERATE_ARGS_ENV = "SWITCHKD_ACCELERATE_ARGS"
"""When set (e.g. ``--multi_gpu --num_processes 2``), training commands re-launch themselves under
``accelerate launch <these args>``; the Prefect tasks set it for the training stages of a flow run."""

LAUNCHED_ENV = "SWITCHKD_LAUNCHED"
"""Set in the environment of the re-launched ranks, so they do not re-launch again."""


def use_cpu() -> bool:
    """True when torch sees no accelerator (CUDA, XPU, MPS...): ranks must then use the CPU over gloo."""
    return not torch.accelerator.is_available()


def process_state() -> PartialState:
    """accelerate's process state (rank, world size, device), distributed over gloo on a CPU-only machine."""
    return PartialState(cpu=use_cpu())


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An :class:`~accelerate.Accelerator` for training, consistent with :func:`process_state`.

    Args:
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (``optim.mixed_precision``).
    """
    return Accelerator(cpu=use_cpu(), mixed_precision=mixed_precision)


def relaunch_command(argv: Sequence[str], environ: dict[str, str] | None = None) -> list[str] | None:
    """The ``accelerate launch`` command that re-runs ``switch-kd <argv>`` on several processes, or None.

    None when :data:`ACCELERATE_ARGS_ENV` is unset or empty, or when this process already is a launched rank
    (:data:`LAUNCHED_ENV`, or a ``WORLD_SIZE`` from a launcher).

    Args:
        argv: the ``switch-kd`` arguments (without the program name).
        environ: the environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    launch_args = env.get(ACCELERATE_ARGS_ENV, "").strip()
    if not launch_args or env.get(LAUNCHED_ENV) or "WORLD_SIZE" in env:
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(launch_args),
            "-m", "switch_core.cli", *argv]


def relaunch(command: list[str]) -> int:
    """Run ``command`` (from :func:`relaunch_command`) with :data:`LAUNCHED_ENV` set; return its exit status."""
    print(f"switch-kd: launching {shlex.join(command[1:])}", file=sys.stderr, flush=True)
    return subprocess.run(command, env={**os.environ, LAUNCHED_ENV: "1"}, check=False).returncode
