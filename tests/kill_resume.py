"""Shared helper of the resume tests (no tests here): a training script run in a subprocess (one process, or several
gloo ranks under ``torch.distributed.run``), killed with SIGKILL once it has logged a given step, then resumed.

The script's command line is ``ROOT MODE KILL_AT``: it trains in ``ROOT`` (``MODE`` ``resume`` resumes the saved
state, ``fresh`` starts a new run) and, after logging the training metrics of step ``KILL_AT``, writes ``ROOT/ready``
and hangs until the test kills it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent

_HEADER = """
import atexit, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from switch_core.processes import end_process_group
from switch_core.tracking import JsonlTracker
from switch_core.training import train
from test_training_support import make_job, method

root, resume, kill_at = Path(sys.argv[1]), sys.argv[2] == "resume", int(sys.argv[3])
# as the switch-kd command does, a gloo group left to the interpreter's exit can abort a rank that finished
# ("terminate called without an active exception"), failing a run whose work is done
atexit.register(end_process_group, synchronise=False)  # no barrier: a failed rank must not hang the other

class Hang(JsonlTracker):
    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == kill_at and "train/loss" in metrics:
            (root / "ready").write_text("x")
            time.sleep(600)  # the test kills us here
"""


def write_script(path: Path, body: str) -> Path:
    """Write the training script to ``path`` and return it. ``body`` (Python source) runs after the module docstring's
    set-up, with ``root``, ``resume`` (bool), ``Hang`` (the tracker class: ``Hang(root / "events.jsonl")``),
    ``make_job``, ``method`` and ``train`` defined."""
    path.write_text(_HEADER.format(tests=str(TESTS_DIR)) + textwrap.dedent(body))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, root: Path, mode: str, kill_at: int = -1, *, processes: int = 1) -> subprocess.Popen:
    """Start ``script`` (``processes`` > 1: that many gloo ranks via ``torch.distributed.run``) in its own process
    group, stdout and stderr together in ``stdout``. ``kill_at`` -1 never hangs."""
    command = [sys.executable]
    if processes > 1:
        command += [
            "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()),
        ]
    return subprocess.Popen(
        [*command, str(script), str(root), mode, str(kill_at)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def kill_at_step(script: Path, root: Path, step: int, *, processes: int = 1, timeout: float = 120) -> None:
    """Run ``script`` fresh in ``root`` until it has logged ``step``, then SIGKILL its process group.

    Raises:
        AssertionError: the run ended, or did not reach ``step`` within ``timeout`` seconds.
    """
    child = launch(script, root, "fresh", kill_at=step, processes=processes)
    deadline = time.monotonic() + timeout
    while not (root / "ready").exists():
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, f"the run never reached step {step}"
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def run_to_end(script: Path, root: Path, mode: str, *, processes: int = 1, timeout: float = 300) -> str:
    """Run ``script`` in ``root`` (``mode`` ``fresh`` or ``resume``) to its end; return its output.

    Raises:
        AssertionError: the run failed or ran past ``timeout`` seconds (then its process group is killed); the
            message holds its output.
    """
    child = launch(script, root, mode, processes=processes)
    try:
        output = child.communicate(timeout=timeout)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # a hung run (e.g. deadlocked ranks) fails instead of blocking
        output = child.communicate()[0].decode()
        raise AssertionError(f"the run did not end within {timeout} s:\n{output}") from None
    assert child.returncode == 0, output
    return output
