"""Resumable training state, written atomically: ``state/<run-name>/step-XXXXXXXX/`` plus a ``latest`` pointer.

A state folder holds everything an uninterrupted run would still have in memory after that step::

    model.pt        student weights (state_dict)
    optimizer.pt    AdamW moments (identical on every process: gradients are all-reduced before the update)
    scheduler.pt    learning-rate scheduler
    trainer.json    step, best checkpoint so far, last dev metrics, calibrated tau0, elapsed time, run fingerprint,
                    process count (and the engine, ``strategy``, of a run on several processes)
    rank-<r>.pt     per process: torch RNG states, the batch source (DistiLLM φ, replay buffer)

A student sharded with FSDP2 (:mod:`.engine`) has no ``model.pt`` / ``optimizer.pt``: its weights and AdamW moments
are saved by every process, shard by shard, as one torch distributed checkpoint (DCP) in ``sharded/``, and loaded
back into the same number of processes.

(the best checkpoint so far sits next to them in ``state/<run-name>/best``, :mod:`.outputs`). A state is resumed
only by a run with the same :func:`resume_fingerprint`: settings, inputs and (unless lenient) library code.

Writing: the folder is filled under a hidden temporary name, renamed, and only then does ``latest`` (a one-line
text file, replaced atomically) point at it; older step folders are removed afterwards. A run killed at any moment
leaves ``latest`` naming a complete folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from switch_core.atomic import atomic_write_json, atomic_write_text
from switch_core.config import ROLLOUT_DATA
from switch_core.dict_diff import dict_changes
from switch_core.hashing import source_fingerprint
from switch_core.training.job import TrainJob

LATEST = "latest"


class StateError(ValueError):
    """A saved training state that cannot be resumed (missing files, another configuration or process count)."""


class StateMismatchError(StateError):
    """The saved state belongs to another run: other settings, inputs or process count (``changed``: the dotted keys)."""

    def __init__(self, message: str, changed: list[str]) -> None:
        super().__init__(message)
        self.changed = changed


class RunLockedError(StateError):
    """Another training of the same run (same state folder) is running."""


def lock_path(state_dir: Path) -> Path:
    """The lock file of the run whose state folder is ``state_dir``: ``<state_dir>.lock`` next to it (the folder
    itself is removed when a run starts over)."""
    return state_dir.with_name(state_dir.name + ".lock")


@contextmanager
def run_lock(state_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold the run's lock (:func:`lock_path`, an exclusive ``fcntl.flock`` taken by the main process, released when
    the block ends or the process dies) while the block runs; collective (every process learns whether it was taken).

    Raises:
        RunLockedError: on every process, when another process (e.g. the ranks of an earlier ``switch-kd`` command
            that are still training) holds the lock.
    """
    handle = None
    result: list[str | None] = [None]
    if accelerator.is_main_process:
        path = lock_path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            handle = None
            result = [f"another training of this run is running (pid {holder} holds {path}); stop it or wait for it"]
    if accelerator.num_processes > 1:
        broadcast_object_list(result, from_process=0)
    if result[0] is not None:
        raise RunLockedError(result[0])
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


@dataclass
class Resumable:
    """The objects whose state is saved (the model, optimizer and scheduler are shared by all processes;
    ``sharded``: the model is an FSDP2 module, saved as a distributed checkpoint)."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    sharded: bool = False


SHARDED = "sharded"
"""The distributed checkpoint (model and optimizer) of a sharded student, inside a state folder."""


def _sharded_state(objects: Resumable) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and optimizer's sharded state dicts (DCP's ``get_state_dict``; initialises AdamW's moments of a
    fresh optimizer, so that loading has keys to fill)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(objects.model, getattr(objects.optimizer, "optimizer", objects.optimizer))


def _save_sharded(folder: Path, objects: Resumable) -> None:
    import torch.distributed.checkpoint as dcp

    model, optimizer = _sharded_state(objects)
    dcp.save({"model": model, "optimizer": optimizer}, checkpoint_id=folder / SHARDED)


def _load_sharded(folder: Path, objects: Resumable) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model, optimizer = _sharded_state(objects)
    state = {"model": model, "optimizer": optimizer}
    dcp.load(state, checkpoint_id=folder / SHARDED)
    set_state_dict(
        objects.model, getattr(objects.optimizer, "optimizer", objects.optimizer),
        model_state_dict=state["model"], optim_state_dict=state["optimizer"],
    )


def _folder_name(step: int) -> str:
    return f"step-{step:08d}"


def saved_step(state_dir: Path) -> int | None:
    """The step of the latest saved state in ``state_dir``, or None when there is none (or it is unreadable)."""
    try:
        latest = latest_trainer(state_dir)
        return None if latest is None else int(latest[1]["step"])
    except (StateError, OSError, ValueError, KeyError):
        return None


def latest_state(state_dir: Path) -> Path | None:
    """The folder ``latest`` points at, or None when there is no saved state.

    Raises:
        StateError: ``latest`` names a folder that does not exist.
    """
    pointer = state_dir / LATEST
    if not pointer.is_file():
        return None
    folder = state_dir / pointer.read_text(encoding="utf-8").strip()
    if not folder.is_dir():
        raise StateError(f"{pointer} names {folder.name!r}, which does not exist; remove {state_dir} to start over")
    return folder


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    state_dir: Path,
    step: int,
    objects: Resumable,
    trainer: dict[str, Any],
    rank_state: dict[str, Any],
    accelerator: Accelerator,
    *,
    strategy: str | None = None,
) -> Path:
    """Save the state after optimizer step ``step`` (collective: every process calls it).

    Args:
        state_dir: ``state/<run-name>``.
        step: optimizer steps done.
        objects: model, optimizer, scheduler (saved by the main process).
        trainer: JSON-serialisable loop state (saved by the main process).
        rank_state: this process's picklable state (tensors, dicts, lists, numbers); RNG states are added here.
        accelerator: for the process index and barriers.
        strategy: the engine of a run on several processes (``distributed.strategy``), recorded in ``trainer.json``;
            None for one process.

    Returns:
        The new state folder.
    """
    final = state_dir / _folder_name(step)
    tmp = state_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save({**rank_state, "rng": _rng_state()}, tmp / f"rank-{accelerator.process_index}.pt")
    if objects.sharded:
        _save_sharded(tmp, objects)
    if accelerator.is_main_process:
        if not objects.sharded:
            torch.save(objects.model.state_dict(), tmp / "model.pt")
            torch.save(objects.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(objects.scheduler.state_dict(), tmp / "scheduler.pt")
        engine = {"strategy": strategy} if strategy is not None else {}
        atomic_write_json(
            tmp / "trainer.json", {**trainer, "step": step, "world_size": accelerator.num_processes, **engine}
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(state_dir / LATEST, final.name + "\n")
        for old in state_dir.glob("step-*"):
            if old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_trainer(state_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest saved state's folder and its ``trainer.json``, or None when there is no saved state.

    Raises:
        StateError: ``latest`` names a folder that does not exist.
    """
    folder = latest_state(state_dir)
    if folder is None:
        return None
    return folder, json.loads((folder / "trainer.json").read_text(encoding="utf-8"))


def _changed_keys(saved: dict[str, Any], current: dict[str, Any], lenient: frozenset[str]) -> list[str]:
    return [change.key for change in dict_changes(saved, current, ignore=lenient)]


def state_changes(
    state_dir: Path,
    fingerprint: dict[str, Any],
    world_size: int,
    *,
    lenient: frozenset[str] = frozenset(),
    strategy: str | None = None,
) -> list[str] | None:
    """What differs between the latest saved state and a run about to start.

    Args:
        state_dir: ``state/<run-name>``.
        fingerprint: the new run's fingerprint.
        world_size: the new run's process count.
        lenient: fingerprint keys not compared.
        strategy: the new run's engine (``distributed.strategy``; None for one process).

    Returns:
        None when there is no saved state, else the dotted fingerprint keys that differ (e.g. ``optim.lr``;
        ``world_size`` for another process count, ``distributed.strategy`` for another engine); an empty list means
        the state can be resumed.

    Raises:
        StateError: ``latest`` names a folder that does not exist.
    """
    latest = latest_trainer(state_dir)
    if latest is None:
        return None
    trainer = latest[1]
    if trainer["world_size"] != world_size:
        return ["world_size"]
    if trainer.get("strategy") != strategy:
        return ["distributed.strategy"]
    return _changed_keys(trainer["fingerprint"], fingerprint, lenient)


def check_resumable(
    state_dir: Path,
    fingerprint: dict[str, Any],
    world_size: int,
    *,
    lenient: frozenset[str] = frozenset(),
    strategy: str | None = None,
) -> dict[str, Any] | None:
    """The latest state's ``trainer.json`` if a run of ``fingerprint`` on ``world_size`` processes with engine
    ``strategy`` (None for one process) can resume it.

    Returns:
        The trainer dict, or None when there is no saved state.

    Raises:
        StateMismatchError: another configuration, inputs (the fingerprint keys outside ``lenient``) or process
            count; the message names each changed dotted key with both values (``optim.lr (0.0001 -> 0.0002)``) and
            ``--restart``. Nothing is deleted.
        StateError: ``latest`` names a folder that does not exist.
    """
    latest = latest_trainer(state_dir)
    if latest is None:
        return None
    folder, trainer = latest
    if trainer["world_size"] != world_size:
        raise StateMismatchError(
            f"{folder} was saved by {trainer['world_size']} process(es), this run has {world_size}: resume with the "
            "same process count (the replay buffers are per process), or pass --restart to discard it", ["world_size"],
        )
    if trainer.get("strategy") != strategy:
        raise StateMismatchError(
            f"{folder} was saved by distributed.strategy={trainer.get('strategy')}, this run has {strategy}: resume "
            "with the same engine (a sharded state holds the weights as shards), or pass --restart to discard it",
            ["distributed.strategy"],
        )
    changes = dict_changes(trainer["fingerprint"], fingerprint, ignore=lenient)
    if changes:
        raise StateMismatchError(
            f"{folder} belongs to a run with other settings or inputs (changed: {', '.join(map(str, changes))}); "
            "pass --restart to discard it and start over (or restore the settings and inputs it was saved with)",
            [change.key for change in changes],
        )
    return trainer


def load_state(
    state_dir: Path,
    objects: Resumable,
    accelerator: Accelerator,
    fingerprint: dict[str, Any],
    *,
    lenient: frozenset[str] = frozenset(),
    strategy: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Load the latest state into ``objects`` and restore this process's RNG states.

    Args:
        state_dir: ``state/<run-name>``.
        objects: model, optimizer, scheduler to load into.
        accelerator: for the process index and count.
        fingerprint: the run's fingerprint (settings, inputs, code); must equal the saved one except for the
            ``lenient`` keys.
        lenient: fingerprint keys whose change does not prevent resuming (the caller may warn about them).
        strategy: the run's engine (``distributed.strategy``; None for one process); must equal the saved one.

    Returns:
        ``(trainer, rank_state)`` dicts, or None when there is no saved state.

    Raises:
        StateMismatchError: another configuration, inputs or process count.
        StateError: missing files.
    """
    trainer = check_resumable(state_dir, fingerprint, accelerator.num_processes, lenient=lenient, strategy=strategy)
    if trainer is None:
        return None
    folder = latest_state(state_dir)
    rank_file = folder / f"rank-{accelerator.process_index}.pt"
    if not rank_file.is_file():
        raise StateError(f"{rank_file} is missing; remove {state_dir} to start over")
    # torch.load cannot map to an indexed CPU device ('cpu:0', what accelerate gives gloo ranks)
    device = "cpu" if accelerator.device.type == "cpu" else accelerator.device
    if objects.sharded:
        _load_sharded(folder, objects)
    else:
        objects.model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
        objects.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    objects.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    _set_rng_state(rank_state.pop("rng"))
    return trainer, rank_state


def clear_state(state_dir: Path, accelerator: Accelerator) -> None:
    """Remove a previous run's state (main process), so a fresh run never mixes with it."""
    if accelerator.is_main_process and state_dir.exists():
        shutil.rmtree(state_dir)
    accelerator.wait_for_everyone()


def resume_fingerprint(job: TrainJob) -> dict[str, Any]:
    """What a resumed run must share with the saved state: settings (optimiser without logging cadence, method,
    rollout settings when the method rolls out, training-set size, selection criterion), ``job.inputs`` and the
    library code (``code``: :func:`~switch_core.hashing.source_fingerprint`; a strict resume only warns about it).

    Returns:
        A JSON-ready dict (saved in ``trainer.json``).
    """
    uses_rollouts = job.method.data in ROLLOUT_DATA
    data = {
        "optim": job.optim.model_dump(exclude={"log_every", "save_every"}), "method": job.method.model_dump(),
        "rollout": job.rollout.model_dump() if uses_rollouts else None, "train": len(job.train),
        "select_by": job.select_by, "inputs": job.inputs, "code": source_fingerprint(),
    }
    return json.loads(json.dumps(data))


def engine_strategy(job: TrainJob, num_processes: int) -> str | None:
    """The engine a run of ``job`` on ``num_processes`` processes trains with (``distributed.strategy``), None for
    one process (recorded in and compared with the saved state)."""
    return job.distributed.strategy if num_processes > 1 else None


def lenient_keys(job: TrainJob) -> frozenset[str]:
    """Fingerprint keys whose change does not prevent resuming ``job``: ``code`` for a strict resume (it warns),
    none when ``restart_if_incompatible`` (any change starts over)."""
    return frozenset() if job.restart_if_incompatible else frozenset({"code"})


def resume_decision(job: TrainJob, num_processes: int) -> Literal["fresh", "resume", "refuse"]:
    """What :func:`~switch_core.training.loop.train` will do with the saved state of ``job``: start ``fresh``
    (no state, ``resume`` off, or an incompatible state with ``restart_if_incompatible``), ``resume`` it, or
    ``refuse`` it (an incompatible state without ``restart_if_incompatible``: it raises, nothing is deleted).

    The stage commands ask this before training, to continue the run's metrics log only when the run continues and
    to start a new one only when the run starts over.

    Raises:
        StateError: ``latest`` names a folder that does not exist.
    """
    if not job.resume:
        return "fresh"
    changes = state_changes(
        job.state_dir, resume_fingerprint(job), num_processes, lenient=lenient_keys(job),
        strategy=engine_strategy(job, num_processes),
    )
    if changes is None:
        return "fresh"
    if not changes:
        return "resume"
    return "fresh" if job.restart_if_incompatible else "refuse"


def will_resume(job: TrainJob, num_processes: int) -> bool:
    """Whether :func:`~switch_core.training.loop.train` will continue the saved state of ``job``
    (:func:`resume_decision` is ``resume``)."""
    return resume_decision(job, num_processes) == "resume"
