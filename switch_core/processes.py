"""Processes and devices: the one place switch-kd creates accelerate's process state, and the re-launch of a
training command under ``accelerate launch``.

accelerate 1.15 decides whether a launch is distributed in ``PartialState._prepare_backend``: without an accelerator
(no CUDA, XPU, ...) it sets up gloo ranks only when ``cpu=True`` is passed, and otherwise treats every rank of
``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) as a lone main process, so each rank trains on
its own and writes the same checkpoint. switch-kd therefore always builds the state with ``cpu`` = "no accelerator
here", on every code path (training loop, trackers, SeqKD generation).

Mixed precision (``optim.mixed_precision``): a training run's forwards, rollouts and dev generations run under its
accelerator's ``autocast``; the stand-alone commands that stand for a run's rollouts (``gate-profile``,
``seqkd-data``, ``rollout``, ``calibrate``) enter the same autocast with :func:`autocast`.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState

ACCELERATE_ARGS_ENV = "SWITCHKD_ACCELERATE_ARGS"
"""When set (e.g. ``--multi_gpu --num_processes 2``), training commands re-launch themselves under
``accelerate launch <these args>``; the Prefect tasks set it for the training stages of a flow run."""

LAUNCHED_ENV = "SWITCHKD_LAUNCHED"
"""Set in the environment of the re-launched ranks, so they do not re-launch again."""

STATUS_DIR_ENV = "SWITCHKD_STATUS_DIR"
"""Set by :func:`relaunch` for its ranks: a folder where each rank that ends on a handled error or Ctrl-C writes its
exit status (``status-<rank>``) and its pid (``pid-<rank>``, to receive the relaunching process's Ctrl-C), exiting 0
so that the launcher prints no traceback of its own; :func:`relaunch` returns the highest status."""

LAUNCH_DEFAULTS = (("--num_machines", "1"), ("--mixed_precision", "no"), ("--dynamo_backend", "no"))
"""``accelerate launch`` options :func:`relaunch_command` adds when not given (without them accelerate warns that it
assumed these values)."""

FOREIGN_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}
"""The environment ``accelerate launch --use_fsdp / --use_deepspeed`` sets, and the engine each turns on."""


FOREIGN_LAUNCH_OPTIONS = {"--use_fsdp": "FSDP", "--use_deepspeed": "DEEPSPEED"}
"""The ``accelerate launch`` options that turn on an engine of accelerate's own (refused by :func:`relaunch_command`)."""


class ForeignEngineError(ValueError):
    """accelerate was launched with its own FSDP / DeepSpeed engine; switch-kd's is ``distributed.strategy``."""


def foreign_engine_message(engine: str) -> str:
    """The one-line refusal of a launch that turned on accelerate's own ``engine`` (``FSDP`` or ``DEEPSPEED``)."""
    return (f"accelerate was launched with {engine} (--use_fsdp / --use_deepspeed or an accelerate config file); "
            "switch-kd picks its engine from distributed.strategy (ddp or fsdp2): launch with --multi_gpu "
            "(or --num_processes) only")


def refuse_foreign_engine(environ: dict[str, str] | None = None) -> None:
    """Refuse a launch with accelerate's FSDP / DeepSpeed plugin before accelerate builds its state (which, on a
    CPU-only machine, fails with an unrelated CUDA error).

    Raises:
        ForeignEngineError: ``ACCELERATE_USE_FSDP`` or ``ACCELERATE_USE_DEEPSPEED`` is true in ``environ``.
    """
    env = os.environ if environ is None else environ
    for key, engine in FOREIGN_ENGINES.items():
        if env.get(key, "").strip().lower() in ("1", "true", "yes"):
            raise ForeignEngineError(foreign_engine_message(engine))


def use_cpu() -> bool:
    """True when torch sees no accelerator (CUDA, XPU, MPS...): ranks must then use the CPU over gloo."""
    return not torch.accelerator.is_available()


def process_state() -> PartialState:
    """accelerate's process state (rank, world size, device), distributed over gloo on a CPU-only machine.

    Raises:
        ForeignEngineError: see :func:`refuse_foreign_engine`.
    """
    refuse_foreign_engine()
    return PartialState(cpu=use_cpu())


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An :class:`~accelerate.Accelerator` for training, consistent with :func:`process_state`.

    accelerate keeps one mixed-precision setting per process and refuses an Accelerator with another; the stages of
    ``switch-kd pipeline`` run in one process, each with its own optimisation section (``teacher_optim``,
    ``warmup_optim``, ``optim``), so a different setting resets accelerate's state first (not the process state:
    ranks and process group stay).

    Args:
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (``optim.mixed_precision``).

    Raises:
        ForeignEngineError: see :func:`refuse_foreign_engine`.
    """
    refuse_foreign_engine()
    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(cpu=use_cpu(), mixed_precision=mixed_precision)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each ``optim.mixed_precision`` but ``no`` (accelerate's mapping)."""


def autocast(mixed_precision: str, device: torch.device | str) -> AbstractContextManager[None]:
    """The autocast a training run's accelerator enters for ``mixed_precision`` (``Accelerator.autocast``), on
    ``device``'s type: ``torch.autocast(device type, dtype=AUTOCAST_DTYPES[mixed_precision])``, or a null context
    for ``"no"``.

    Args:
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (`switch_core.config.MixedPrecision`).
        device: where the models run (``"cpu"``, ``"cuda:0"``...).

    Raises:
        KeyError: an unknown ``mixed_precision``.
    """
    if mixed_precision == "no":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[mixed_precision])


def relaunch_command(argv: Sequence[str], environ: dict[str, str] | None = None) -> list[str] | None:
    """The ``accelerate launch`` command that re-runs ``switch-kd <argv>`` on several processes, or None.

    The options of :data:`LAUNCH_DEFAULTS` not in :data:`ACCELERATE_ARGS_ENV` are added, and ``--multi_gpu`` when
    ``--num_processes`` is above 1 without it (``accelerate launch`` would otherwise start one process on a CPU-only
    machine). None when :data:`ACCELERATE_ARGS_ENV` is unset or empty, or when this process already is a launched
    rank (:data:`LAUNCHED_ENV`, or a ``WORLD_SIZE`` from a launcher).

    Args:
        argv: the ``switch-kd`` arguments (without the program name).
        environ: the environment to read (default ``os.environ``).

    Raises:
        ForeignEngineError: the arguments hold ``--use_fsdp`` or ``--use_deepspeed`` (:data:`FOREIGN_LAUNCH_OPTIONS`).
        ValueError: ``--num_processes`` is not an integer.
    """
    env = os.environ if environ is None else environ
    launch_args = shlex.split(env.get(ACCELERATE_ARGS_ENV, ""))
    if not launch_args or env.get(LAUNCHED_ENV) or "WORLD_SIZE" in env:
        return None
    given = {arg.split("=", 1)[0] for arg in launch_args}
    for option, engine in FOREIGN_LAUNCH_OPTIONS.items():
        if option in given:
            raise ForeignEngineError(foreign_engine_message(engine))
    defaults = [arg for option, value in LAUNCH_DEFAULTS if option not in given for arg in (option, value)]
    if "--multi_gpu" not in given and _num_processes(launch_args) > 1:
        defaults.append("--multi_gpu")
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_args, *defaults,
            "-m", "switch_core.cli", *argv]


def _num_processes(launch_args: list[str]) -> int:
    """The ``--num_processes`` of ``accelerate launch`` arguments (``--num_processes N`` or ``--num_processes=N``);
    1 when absent.

    Raises:
        ValueError: its value is missing or not an integer.
    """
    for index, arg in enumerate(launch_args):
        option, _, value = arg.partition("=")
        if option == "--num_processes":
            value = value or (launch_args[index + 1] if index + 1 < len(launch_args) else "")
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{ACCELERATE_ARGS_ENV}: --num_processes needs an integer, got {value!r}") from None
    return 1


def is_main_rank(environ: dict[str, str] | None = None) -> bool:
    """True unless a launcher's ``RANK`` names another process than rank 0 (read without starting accelerate)."""
    env = os.environ if environ is None else environ
    return env.get("RANK", "0") == "0"


def register_rank(environ: dict[str, str] | None = None) -> None:
    """In a rank started by :func:`relaunch`: record this process's pid (so Ctrl-C reaches it) and restore Python's
    Ctrl-C handler (the launcher runs with Ctrl-C ignored). Does nothing elsewhere."""
    env = os.environ if environ is None else environ
    folder = env.get(STATUS_DIR_ENV)
    if not folder:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    (Path(folder) / f"pid-{env.get('RANK', '0')}").write_text(str(os.getpid()))


def die_with_launcher(environ: dict[str, str] | None = None) -> None:
    """In a rank started by torch elastic (``accelerate launch``, ``torchrun``, :func:`relaunch`; it sets
    ``TORCHELASTIC_RUN_ID``) on Linux: ask the kernel to send this process SIGKILL when its parent (the launcher's
    agent) dies (``prctl(PR_SET_PDEATHSIG)``). torch elastic starts ranks in sessions of their own, so a SIGKILL of the
    ``switch-kd`` command's process group would otherwise leave them training. Does nothing elsewhere; calling it
    again changes nothing; exits at once (status 1) when the parent already died."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def end_process_group(*, synchronise: bool) -> None:
    """Destroy torch's default process group, if any, before the interpreter exits (a gloo group left to the exit
    handlers can abort a rank with ``terminate called without an active exception``).

    Args:
        synchronise: wait at a barrier first (a command that succeeded on every rank); False on an error or
            Ctrl-C path, where another rank may never reach it.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronise:
        try:
            dist.barrier()
        except RuntimeError:  # gloo: another rank ended without reaching it (that rank reports its own error)
            pass
    dist.destroy_process_group()


def rank_exit_status(status: int, environ: dict[str, str] | None = None) -> int:
    """The exit status for a rank ending with ``status``: in a rank started by :func:`relaunch`, ``status`` is
    written to its status folder and 0 returned (the launcher then exits quietly); elsewhere ``status``."""
    env = os.environ if environ is None else environ
    folder = env.get(STATUS_DIR_ENV)
    if not folder or status == 0:
        return status
    (Path(folder) / f"status-{env.get('RANK', '0')}").write_text(str(status))
    return 0


def relaunch(command: list[str]) -> int:
    """Run ``command`` (from :func:`relaunch_command`) with :data:`LAUNCHED_ENV` set; return the highest exit status
    of the launcher and its ranks (:data:`STATUS_DIR_ENV`).

    Ctrl-C is passed to the ranks only (the launcher ignores it, so it prints no traceback); each rank saves and
    exits as on one process, and this returns 130 quietly once the launcher has ended.
    """
    print(f"switch-kd: launching {shlex.join(command[1:])}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="switchkd-ranks-") as folder:
        # torchrun's agent would turn Ctrl-C into its SignalException traceback: it keeps SIGINT ignored instead
        # (the ranks, in sessions of their own, get it from _interrupt_ranks and restore it in register_rank)
        env = {**os.environ, LAUNCHED_ENV: "1", STATUS_DIR_ENV: folder,
               "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGHUP,SIGQUIT"}
        launcher = subprocess.Popen(command, env=env, preexec_fn=_ignore_ctrl_c)  # noqa: PLW1509 (no threads yet)
        interrupted = False
        while True:
            try:
                returncode = launcher.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
                if not _interrupt_ranks(Path(folder)):  # no rank is running switch-kd yet: stop the launch
                    launcher.terminate()
        statuses = [int(path.read_text()) for path in Path(folder).glob("status-*")]
        status = max([returncode, *statuses])
        return 130 if interrupted and status in (0, 130) else status


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt_ranks(folder: Path) -> bool:
    """Send Ctrl-C to the ranks that recorded their pid in ``folder``; False when none had."""
    pids = [path.read_text() for path in folder.glob("pid-*")]
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass  # the rank already ended (or is still writing its pid)
    return bool(pids)
