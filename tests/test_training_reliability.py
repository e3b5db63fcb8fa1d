"""What survives an interrupted or killed training run (issue 17): Ctrl-C then the same command continues, a saved
state is deleted only by an explicit flag, a resumed run's rollout trace has one line per step, models/<run>
appears only when the run ends, summaries hold no timings, and written files follow the umask."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from test_training_support import make_job, method

from switch_core import atomic
from switch_core.cli import main, rerun_command
from switch_core.tracking import NullTracker
from switch_core.training import SUMMARY_FILE, TIMINGS_FILE, TRACE_FILE, read_traces, train
from switch_core.training.loop import _Run
from switch_core.training.state import latest_state

PARAMS = {
    "preset": "tiny",
    "data": {"embedded_size": 48, "dev_size": 8, "test_size": 4, "max_length": 80, "max_prompt_length": 48},
    "student": {"warmup": False},
    "teacher": {"sft": False},
    "optim": {"max_steps": 4, "eval_examples": 2, "save_every": 1, "eval_every": 1},
    "rollout": {"max_new_tokens": 8},
    "eval": {"max_new_tokens": 8},
    "runs": {"kd": {"method": "kd"}},
}


class Killed(Exception):
    """Stands for SIGKILL in-process: the run stops between two writes, nothing is cleaned up."""


class KillAt(NullTracker):
    """Raises :class:`Killed` when the metrics of training step ``step`` are logged (after its trace line, before
    its evaluation and state)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.step and "train/loss" in metrics:
            raise Killed(step)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for command in (["prepare-data"], ["setup-teacher"], ["build-student"]):
        assert _cli(root, *command) == 0
    return root


def _cli(root: Path, *argv: str) -> int:
    command, *rest = argv
    return main([command, "--params", str(root / "params.yaml"), *rest])


def _interrupt_after_save(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Ctrl-C right after the state of step ``at_step`` is saved."""
    save = _Run.save

    def save_then_interrupt(self: _Run) -> None:
        save(self)
        if self.step == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "save", save_then_interrupt)


def test_ctrl_c_then_the_same_command_continues_the_saved_state(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = ("distill", "--run", "kd")
    state = project / "runs" / "tiny" / "state" / "kd"
    with monkeypatch.context() as patch:
        _interrupt_after_save(patch, at_step=2)
        assert _cli(project, *argv) == 130
    err = capsys.readouterr().err
    assert (f"the training state saved at step 2 is kept: `switch-kd distill --params {project / 'params.yaml'} "
            "--run kd` continues from it") in err
    assert latest_state(state).name == "step-00000002"
    assert not (project / "runs" / "tiny" / "models" / "kd").exists()  # nothing published yet

    assert _cli(project, *argv) == 0  # what the message says
    assert "resuming at step 2/4" in capsys.readouterr().err
    summary = json.loads((project / "runs" / "tiny" / "models" / "kd" / SUMMARY_FILE).read_text())
    assert summary["steps"] == 4


def test_ctrl_c_before_any_saved_state_says_the_rerun_starts_over(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The message must not promise saved work that does not exist (a run interrupted before its first save)."""
    def interrupt(self: _Run) -> dict[str, float]:
        raise KeyboardInterrupt

    argv = ("distill", "--run", "kd-early", "--set", "runs.kd-early.method=kd")
    with monkeypatch.context() as patch:
        patch.setattr(_Run, "train_step", interrupt)
        assert _cli(project, *argv) == 130
    err = capsys.readouterr().err
    assert "no training state was saved yet" in err and "starts over" in err and "continues" not in err
    assert not (project / "runs" / "tiny" / "state" / "kd-early" / "latest").exists()


def test_an_incompatible_state_is_kept_until_restart(project: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ("distill", "--run", "kd")
    assert _cli(project, *argv) == 0  # finished (or resumed) run: state at step 4
    state = project / "runs" / "tiny" / "state" / "kd"
    saved = latest_state(state)
    log = project / "runs" / "tiny" / "tracking" / "kd" / "metrics.jsonl"
    logged = log.read_text()
    capsys.readouterr()

    changed = (*argv, "--set", "optim.lr=5e-4")
    assert _cli(project, *changed) == 2
    err = capsys.readouterr().err
    assert "changed: optim.lr (" in err and "-> 0.0005)" in err and "--restart" in err
    assert latest_state(state) == saved and (saved / "model.pt").is_file()  # nothing deleted
    assert log.read_text() == logged  # nor the run's metrics log

    assert _cli(project, *changed, "--restart") == 0
    assert "resuming" not in capsys.readouterr().err
    trainer = json.loads((latest_state(state) / "trainer.json").read_text())
    assert trainer["fingerprint"]["optim"]["lr"] == 5e-4


def test_rerun_command_drops_restart() -> None:
    assert rerun_command(["distill", "--run", "kd", "--restart", "--set", "a.b=c d"]) == (
        "switch-kd distill --run kd --set 'a.b=c d'"
    )


def test_killed_then_resumed_run_has_one_trace_line_per_step(tmp_path: Path) -> None:
    settings = {"max_steps": 5, "save_every": 2}
    job = make_job(tmp_path, method("switch"), **settings)
    with pytest.raises(Killed):
        train(job, tracker=KillAt(3))  # state saved at step 2; step 3's trace line written
    assert latest_state(job.state_dir).name == "step-00000002"
    assert [row["step"] for row in read_traces(job.state_dir / TRACE_FILE)] == [1, 2, 3]

    assert train(make_job(tmp_path, method("switch"), resume=True, **settings)).steps == 5
    lines = [json.loads(line) for line in (job.state_dir / TRACE_FILE).read_text().splitlines()]
    assert [row["step"] for row in lines] == [1, 2, 3, 4, 5]


def test_a_killed_run_publishes_nothing_and_the_resumed_run_publishes_at_the_end(tmp_path: Path) -> None:
    settings = {"max_steps": 4, "save_every": 2, "eval_every": 1}
    job = make_job(tmp_path, method("sft"), with_teacher=False, **settings)
    with pytest.raises(Killed):
        train(job, tracker=KillAt(3))  # best checkpoints selected at steps 1 and 2
    assert not job.output_dir.exists()
    assert (job.state_dir / "best" / "model.safetensors").is_file()  # kept with the state

    result = train(make_job(tmp_path, method("sft"), with_teacher=False, resume=True, **settings))
    published = {p.name for p in job.output_dir.iterdir()}
    assert published == {p.name for p in (job.state_dir / "best").iterdir()} | {SUMMARY_FILE}
    assert json.loads((job.output_dir / SUMMARY_FILE).read_text())["best_step"] == result.best_step


def test_read_traces_keeps_the_last_line_of_each_step(tmp_path: Path) -> None:
    path = tmp_path / TRACE_FILE
    rows = [{"step": 1, "v": "a"}, {"step": 2, "v": "b"}, {"step": 1, "v": "c"}, {"step": 3, "v": "d"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "v"')  # torn last line
    assert read_traces(path) == [{"step": 1, "v": "c"}, {"step": 2, "v": "b"}, {"step": 3, "v": "d"}]
    assert read_traces(tmp_path / "missing.jsonl") == []
    path.write_text('{"v": 1}\n{"step": 2}\n')
    with pytest.raises(ValueError, match="integer 'step'"):
        read_traces(path)


def test_trace_counts_of_several_processes_add_up_by_position() -> None:
    from switch_core.training.traces import sum_by_position

    assert sum_by_position([([1, 0, 2], [2, 2, 2]), None, ([1], [3])]) == ([2, 0, 2], [5, 2, 2])
    assert sum_by_position([None, None]) is None


def test_summary_is_the_same_bytes_for_a_rerun_and_timings_are_apart(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        job = make_job(tmp_path / name, method("sft"), with_teacher=False, max_steps=2)
        train(job)
        files.append({p.name: p.read_bytes() for p in sorted(job.output_dir.iterdir())})
        assert "wall_seconds" not in json.loads((job.output_dir / SUMMARY_FILE).read_text())
        assert json.loads((job.state_dir / TIMINGS_FILE).read_text())["wall_seconds"] > 0
    assert files[0].keys() == files[1].keys() and SUMMARY_FILE in files[0]
    assert files[0] == files[1]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic.atomic_write_json(tmp_path / "x.json", {"a": 1})
        job = make_job(tmp_path, method("sft"), with_teacher=False, max_steps=1)
        train(job)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert path.stat().st_mode & 0o777 == want
    for written in (job.output_dir / SUMMARY_FILE, job.state_dir / TIMINGS_FILE, job.state_dir / "latest",
                    latest_state(job.state_dir) / "trainer.json", job.output_dir / "model.safetensors"):
        assert written.stat().st_mode & 0o777 == want, written
