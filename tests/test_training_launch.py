"""Multi-process training through the command line: ``switch-kd distill`` re-launched under ``accelerate launch`` on
two CPU ranks (gloo) trains to the weights of the one-process command, with one main process."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from test_training_support import make_job, method

from switch_core.cli import main, rerun_command
from switch_core.processes import (
    ACCELERATE_ARGS_ENV,
    LAUNCHED_ENV,
    STATUS_DIR_ENV,
    ForeignEngineError,
    end_process_group,
    rank_exit_status,
    refuse_foreign_engine,
    relaunch_command,
)
from switch_core.training import train
from switch_core.training.state import RunLockedError, lock_path, run_lock

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TWO_CPU_RANKS = "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"


def test_relaunch_command_wraps_the_arguments() -> None:
    command = relaunch_command(["distill", "--run", "kd"], {ACCELERATE_ARGS_ENV: "--num_processes 2 --multi_gpu"})
    assert command[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "switch_core.cli", "distill", "--run", "kd"]
    assert command[0] == sys.executable


def test_relaunch_command_keeps_the_given_defaults() -> None:
    launch = "--multi_gpu --num_machines=2 --mixed_precision bf16 --dynamo_backend no"
    command = relaunch_command(["sft"], {ACCELERATE_ARGS_ENV: launch})
    assert command[3:command.index("-m", 3)] == launch.split()


def test_rerun_command_names_the_launch_of_several_processes() -> None:
    argv = ["distill", "--run", "kd", "--restart"]
    assert rerun_command(argv, {}) == "switch-kd distill --run kd"
    assert rerun_command(argv, {"WORLD_SIZE": "1", ACCELERATE_ARGS_ENV: "--num_processes 1"}) == (
        "switch-kd distill --run kd")
    assert rerun_command(argv, {"WORLD_SIZE": "2", ACCELERATE_ARGS_ENV: "--multi_gpu --num_processes 2"}) == (
        "SWITCHKD_ACCELERATE_ARGS='--multi_gpu --num_processes 2' switch-kd distill --run kd")
    assert rerun_command(argv, {"WORLD_SIZE": "4"}) == (  # launched by `accelerate launch` directly
        "SWITCHKD_ACCELERATE_ARGS='--multi_gpu --num_processes 4' switch-kd distill --run kd")


@pytest.mark.parametrize("key", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_accelerate_engines_are_refused_before_accelerate_starts(key) -> None:
    with pytest.raises(ForeignEngineError, match="distributed.strategy"):
        refuse_foreign_engine({key: "true"})
    refuse_foreign_engine({key: "false"})


def test_a_rank_of_a_relaunch_reports_its_status_in_the_folder(tmp_path) -> None:
    environ = {STATUS_DIR_ENV: str(tmp_path), "RANK": "1"}
    assert rank_exit_status(0, environ) == 0 and not list(tmp_path.iterdir())
    assert rank_exit_status(2, environ) == 0
    assert (tmp_path / "status-1").read_text() == "2"
    assert rank_exit_status(2, {"RANK": "1"}) == 2  # a plain `accelerate launch`: the launcher sees the status


@pytest.mark.parametrize("launch", ["--num_processes 3", "--num_processes=3 --cpu"])
def test_several_processes_without_multi_gpu_get_it(launch) -> None:
    command = relaunch_command(["distill"], {ACCELERATE_ARGS_ENV: launch})
    assert command[command.index("--dynamo_backend") + 2] == "--multi_gpu"
    assert command.count("--multi_gpu") == 1
    assert "--multi_gpu" not in relaunch_command(["distill"], {ACCELERATE_ARGS_ENV: "--num_processes 1"})
    with pytest.raises(ValueError, match="--num_processes needs an integer, got 'two'"):
        relaunch_command(["distill"], {ACCELERATE_ARGS_ENV: "--num_processes two"})


@pytest.mark.parametrize(("option", "engine"), [("--use_fsdp", "FSDP"), ("--use_deepspeed", "DEEPSPEED")])
def test_accelerate_engine_options_are_refused_before_launching(option, engine, capsys, monkeypatch) -> None:
    with pytest.raises(ForeignEngineError, match=f"launched with {engine}"):
        relaunch_command(["distill"], {ACCELERATE_ARGS_ENV: f"{option} --num_processes 2"})
    monkeypatch.setenv(ACCELERATE_ARGS_ENV, f"{option} --num_processes 2")
    assert main(["distill", "--run", "kd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"switch-kd distill: error: accelerate was launched with {engine}")


@pytest.mark.parametrize("environ", [{}, {ACCELERATE_ARGS_ENV: "  "}, {ACCELERATE_ARGS_ENV: "--multi_gpu",
                                     LAUNCHED_ENV: "1"}, {ACCELERATE_ARGS_ENV: "--multi_gpu", "WORLD_SIZE": "2"}])
def test_no_relaunch_without_args_or_inside_a_launch(environ) -> None:
    assert relaunch_command(["distill", "--run", "kd"], environ) is None


def _config_args(run_dir: Path) -> list[str]:
    # No teacher SFT and no warm-up: the distillation starts from the untrained tiny student.
    sets = {"run_dir": str(run_dir), "tracking.backend": "jsonl", "teacher.sft": "false", "student.warmup": "false",
            "optim.max_steps": "3", "optim.micro_batch_size": "2"}
    return ["--params", str(PROJECT_ROOT / "params.yaml"), "--preset", "tiny",
            *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]]


def _distill(run_dir: Path, *, launch: str | None, resume: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ACCELERATE_ARGS_ENV, LAUNCHED_ENV)}
    if launch:
        env[ACCELERATE_ARGS_ENV] = launch
    argv = ["distill", "--run", "kd", *(["--resume"] if resume else []), *_config_args(run_dir)]
    return subprocess.run([sys.executable, "-m", "switch_core.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow  # three command-line runs, two of them with two ranks (~40 s on 2 busy cores)
def test_two_rank_launch_equals_one_process(tmp_path) -> None:
    one = tmp_path / "one"
    for stage in (["prepare-data"], ["setup-teacher"], ["build-student"]):
        assert main([*stage, *_config_args(one)]) == 0
    two = tmp_path / "two"
    shutil.copytree(one, two)

    single = _distill(one, launch=None)
    assert single.returncode == 0, single.stderr
    launched = _distill(two, launch=TWO_CPU_RANKS)
    assert launched.returncode == 0, launched.stderr
    output = launched.stdout + launched.stderr
    assert "accelerate.commands.launch" in output
    assert output.count("distill kd: best at step") == 1  # one main process reports; the other rank is quiet

    a = load_file(one / "models" / "kd" / "model.safetensors")
    b = load_file(two / "models" / "kd" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key

    again = _distill(two, launch=TWO_CPU_RANKS, resume=True)  # a finished state: both ranks load it and stop
    assert again.returncode == 0, again.stderr
    assert "best at step" in again.stdout + again.stderr


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """A tiny run whose distillation ``kd`` was trained (and its state saved) by one process."""
    run_dir = tmp_path_factory.mktemp("launch") / "run"
    for stage in (["prepare-data"], ["setup-teacher"], ["build-student"]):
        assert main([*stage, *_config_args(run_dir)]) == 0
    single = _distill(run_dir, launch=None)
    assert single.returncode == 0, single.stderr
    return run_dir


def _assert_one_line_refusal(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(message) == 1, result.stderr  # rank 0 reports; rank 1 is quiet
    for noise in ("Traceback", "ChildFailedError", "Connection closed"):
        assert noise not in result.stderr, result.stderr


@pytest.mark.slow  # two ranks start (~20 s on 2 busy cores)
def test_every_rank_refuses_a_state_saved_by_another_process_count(trained_once) -> None:
    refused = _distill(trained_once, launch="--multi_gpu --num_processes 2", resume=True)
    _assert_one_line_refusal(refused, "saved by 1 process")
    assert "launching" in refused.stderr and "--dynamo_backend no" in refused.stderr
    assert "were not passed to" not in refused.stderr  # accelerate's warning about assumed options


@pytest.mark.slow  # two ranks start (~20 s on 2 busy cores)
def test_an_fsdp_launch_is_refused_with_one_line(trained_once) -> None:
    refused = _distill(trained_once, launch="--use_fsdp --num_processes 2")
    _assert_one_line_refusal(refused, "switch-kd picks its engine from distributed.strategy")


def _endless_relaunch(trained_once: Path, tmp_path: Path, **popen: Any) -> tuple[subprocess.Popen, Path]:
    """Start ``switch-kd distill --run kd`` relaunched on 2 ranks (``SWITCHKD_ACCELERATE_ARGS``) in a copy of
    ``trained_once`` under ``tmp_path / "run"``, with 100,000 steps and a state every 2: ``(process, run folder)``.
    ``TMPDIR`` is ``tmp_path``, where relaunch makes its status folder (the ranks' pids); ``popen`` goes to
    :class:`subprocess.Popen` (stdout is discarded)."""
    env = {k: v for k, v in os.environ.items() if k not in (ACCELERATE_ARGS_ENV, LAUNCHED_ENV)}
    env[ACCELERATE_ARGS_ENV] = "--multi_gpu --num_processes 2"
    env["TMPDIR"] = str(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(trained_once, run_dir, ignore=shutil.ignore_patterns("state", "tracking"))
    argv = ["distill", "--run", "kd", *_config_args(run_dir), "--set", "optim.max_steps=100000",
            "--set", "optim.save_every=2"]
    process = subprocess.Popen([sys.executable, "-m", "switch_core.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                               **popen)
    return process, run_dir


@pytest.mark.slow  # two ranks start (~20 s on 2 busy cores)
def test_ctrl_c_of_a_relaunch_reaches_the_ranks_and_ends_quietly(trained_once, tmp_path) -> None:
    # a test run in the background (`make test &`) inherits SIGINT ignored, which Python then keeps: restore it
    parent, run_dir = _endless_relaunch(trained_once, tmp_path, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not (run_dir / "state" / "kd" / "latest").exists():  # both ranks are training
            assert parent.poll() is None, parent.stderr.read()
            time.sleep(0.2)
        parent.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends to the relaunching process
        _, stderr = parent.communicate(timeout=240)
    finally:
        parent.kill()
    assert parent.returncode == 130, stderr
    assert stderr.count("distill: interrupted;") == 1, stderr  # rank 0 only
    assert "is kept: `SWITCHKD_ACCELERATE_ARGS='--multi_gpu --num_processes 2' switch-kd distill --run kd" in stderr, (
        stderr)
    for noise in ("Traceback", "SignalException", "ChildFailedError"):
        assert noise not in stderr, stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))  # a zombie has died


@pytest.mark.slow  # two ranks start (~20 s on 2 busy cores)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_a_relaunch_ends_its_ranks_and_frees_the_run(trained_once, tmp_path) -> None:
    parent, run_dir = _endless_relaunch(trained_once, tmp_path, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pid_files: list[Path] = []
        while not (run_dir / "state" / "kd" / "latest").exists() or len(pid_files) < 2:  # both ranks are training
            assert parent.poll() is None
            time.sleep(0.2)
            pid_files = [path for path in tmp_path.glob("switchkd-ranks-*/pid-*") if path.read_text().strip()]
        pids = [int(path.read_text()) for path in pid_files]
        assert len(pids) == 2
        os.killpg(parent.pid, signal.SIGKILL)  # the command and the launcher; the ranks have sessions of their own
        parent.wait(timeout=60)
        deadline = time.monotonic() + 120  # generous: a loaded machine delays the kernel's parent-death signal handling
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "the ranks outlived their launcher"
            time.sleep(0.2)
    finally:
        parent.kill()
    # the dead rank 0 no longer holds the run's lock. A killed process's threads exit one by one: its main thread can
    # already read as a zombie while another thread still holds the open files, so the lock is awaited too.
    with lock_path(run_dir / "state" / "kd").open() as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"the run's lock is still held by pid {handle.read().strip()}"
                time.sleep(0.2)


def test_a_second_training_of_the_same_run_is_refused(tmp_path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    job = make_job(tmp_path, method("sft"), max_steps=1)
    refusal = f"another training of this run is running \\(pid {os.getpid()} "
    with run_lock(job.state_dir, accelerator), pytest.raises(RunLockedError, match=refusal):
        train(job, accelerator=accelerator)
    assert lock_path(job.state_dir) == tmp_path / "state" / "run.lock"
    assert train(job, accelerator=accelerator).steps == 1  # released when the block ended


def test_end_process_group_destroys_the_group(tmp_path) -> None:
    import torch.distributed as dist

    end_process_group(synchronise=True)  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    end_process_group(synchronise=True)
    assert not dist.is_initialized()
