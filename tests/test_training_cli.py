"""The `switch-kd sft`, `seqkd-data` and `distill` commands on the tiny preset, including a chained multi-stage run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from switch_core.cli import main
from switch_core.config import load_config
from switch_core.tracking import read_jsonl_events
from switch_core.training.examples import load_examples

PARAMS = {
    "preset": "tiny",
    "data": {"embedded_size": 48, "dev_size": 8, "test_size": 4, "max_length": 80, "max_prompt_length": 48},
    "teacher_optim": {"max_steps": 2, "eval_examples": 2},
    "warmup_optim": {"max_steps": 2, "eval_examples": 2},
    "optim": {"max_steps": 2, "eval_examples": 2, "save_every": 1},
    "rollout": {"max_new_tokens": 8},
    "eval": {"max_new_tokens": 8},
    "runs": {
        "kd": {"method": "kd"},
        "seqkd": {"method": "seqkd"},
        "switch-high": {"method": "switch", "overrides": {"rollout.tau0": 0.5}},
        "switch-low": {"method": "switch", "init_from": "switch-high", "overrides": {"rollout.tau0": 0.05}},
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for command in (["prepare-data"], ["setup-teacher"], ["build-student"]):
        assert _cli(root, *command) == 0
    return root


def _cli(root: Path, *argv: str) -> int:
    command, *rest = argv
    return main([command, "--params", str(root / "params.yaml"), *rest])


def test_distill_before_warmup_names_the_missing_stage(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli(project, "distill", "--run", "switch-low") == 2
    assert "run `switch-kd distill --run switch-high` first" in capsys.readouterr().err


def test_stage_chain(project: Path, capsys: pytest.CaptureFixture) -> None:
    run = project / "runs" / "tiny"  # the preset's run_dir, relative to the params file
    assert _cli(project, "sft", "--role", "teacher") == 0
    assert _cli(project, "sft", "--role", "student") == 0
    assert (run / "models" / "teacher" / "train_summary.json").is_file()
    warmup = json.loads((run / "models" / "student-sft" / "train_summary.json").read_text())
    assert warmup["steps"] == 2 and warmup["best_step"] == 2

    assert _cli(project, "seqkd-data") == 0
    seqkd_rows = (run / "seqkd" / "train.jsonl").read_text().splitlines()
    meta = json.loads((run / "seqkd" / "meta.json").read_text())
    assert len(seqkd_rows) == meta["records"] > 0
    capsys.readouterr()
    assert _cli(project, "seqkd-data") == 0
    assert "up to date" in capsys.readouterr().out  # generated once, reused
    assert _cli(project, "distill", "--method", "seqkd") == 0

    assert _cli(project, "distill", "--run", "switch-high") == 0
    assert _cli(project, "distill", "--run", "switch-low") == 0
    high = json.loads((run / "models" / "switch-high" / "train_summary.json").read_text())
    low = json.loads((run / "models" / "switch-low" / "train_summary.json").read_text())
    assert (high["tau0"], low["tau0"]) == (0.5, 0.05)  # each stage with its own settings
    tags = read_jsonl_events(run / "tracking" / "switch-low" / "metrics.jsonl", "tags")[0]["tags"]
    assert tags == {"stage": "distill", "run": "switch-low", "method": "switch", "init_from": "switch-high"}
    assert AutoModelForCausalLM.from_pretrained(run / "models" / "switch-low").config.vocab_size > 0

    log = run / "tracking" / "switch-low" / "metrics.jsonl"
    events = len(log.read_text().splitlines())
    capsys.readouterr()
    assert _cli(project, "distill", "--run", "switch-low", "--resume") == 0  # finished: nothing left to do
    assert f"resuming at step {low['steps']}/{low['steps']}" in capsys.readouterr().err
    assert len(log.read_text().splitlines()) > events  # a resumed run continues its log

    assert _cli(project, "distill", "--run", "switch-low", "--restart") == 0  # a fresh run starts a new log
    fresh = read_jsonl_events(log, "tags")
    assert len(fresh) == 1 and len(log.read_text().splitlines()) <= events


def test_unknown_run_is_a_configuration_error(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli(project, "distill", "--run", "switch-hihg") == 2
    assert "did you mean 'switch-high'" in capsys.readouterr().err


def test_without_warmup_runs_start_from_the_untrained_student(project: Path) -> None:
    assert _cli(project, "distill", "--run", "kd", "--set", "student.warmup=false", "--set", "optim.max_steps=1") == 0
    tags = read_jsonl_events(project / "runs" / "tiny" / "tracking" / "kd" / "metrics.jsonl", "tags")[-1]["tags"]
    assert tags["init_from"] == "student-init"


def test_teacher_without_sft_is_the_base_teacher(project: Path, capsys: pytest.CaptureFixture) -> None:
    run = project / "runs" / "tiny"
    assert _cli(project, "sft", "--role", "teacher", "--set", "teacher.sft=false") == 0
    assert "teacher.sft is false" in capsys.readouterr().out
    base = (run / "models" / "teacher-base" / "model.safetensors").read_bytes()
    assert (run / "models" / "teacher" / "model.safetensors").read_bytes() == base
    assert not (run / "models" / "teacher" / "train_summary.json").exists()


def test_resume_compatible_continues_the_same_run_and_restarts_a_changed_one(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    """What dvc.yaml runs: a killed stage continues, a stage re-run for changed inputs never continues stale state."""
    base = ("distill", "--run", "kd", "--set", "student.warmup=false", "--set", "teacher.sft=false",
            "--set", "optim.max_steps=2")
    log = project / "runs" / "tiny" / "tracking" / "kd" / "metrics.jsonl"
    assert _cli(project, *base, "--restart") == 0  # the state of another test's kd run is discarded
    events = len(log.read_text().splitlines())
    capsys.readouterr()
    assert _cli(project, *base, "--resume-compatible") == 0
    assert "resuming at step 2/2" in capsys.readouterr().err
    assert len(log.read_text().splitlines()) > events  # the log continues with the run

    changed = (*base, "--set", "data.max_length=72")  # other tokenisation: the examples differ
    assert _cli(project, *changed, "--resume") == 2
    assert "changed: inputs.data.max_length (128 -> 72)" in capsys.readouterr().err  # the key and both values
    assert _cli(project, *changed, "--resume-compatible") == 0
    assert "starting over (changed: inputs.data.max_length)" in capsys.readouterr().err
    assert len(read_jsonl_events(log, "tags")) == 1  # a fresh log for the fresh run


def test_a_method_without_a_run_names_the_setting_that_adds_one(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli(project, "distill", "--run", "gkd") == 2  # gkd is a method; this project's runs do not use it
    err = capsys.readouterr().err
    assert "unknown run 'gkd'" in err
    assert "'gkd' is a method that no run uses: add a run of it with --set runs.gkd.method=gkd" in err
    assert _cli(project, "distill", "--run", "switch-hihg") == 2
    assert "is a method" not in capsys.readouterr().err


def test_kd_warmup_trains_the_student_on_the_teachers_distributions(project: Path) -> None:
    """``student.warmup_method: kd``: the warm-up's dev loss at step 0 is the token-mean forward KL(p‖q) of the teacher
    p and the untrained student q over the dev responses, recomputed here in float64 from the two checkpoints."""
    run = project / "runs" / "tiny"
    assert _cli(project, "sft", "--role", "teacher") == 0
    assert _cli(project, "sft", "--role", "student", "--set", "student.warmup_method=kd", "--restart") == 0
    log = run / "tracking" / "student-sft" / "metrics.jsonl"
    assert read_jsonl_events(log, "tags")[0]["tags"]["method"] == "kd"
    logged = next(e["metrics"] for e in read_jsonl_events(log, "metrics") if e["step"] == 0)

    config = load_config(project / "params.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run / "models" / "student-init")
    dev = load_examples(run / "data" / "dev.jsonl", tokenizer, config.data)
    models = [AutoModelForCausalLM.from_pretrained(run / "models" / name, dtype=torch.float64).eval()
              for name in ("teacher", "student-init")]
    kl_sum, ce_sum, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        for example in dev:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor(example.labels[1:])
            mask = labels != -100
            teacher, student = (m(ids).logits[0, :-1][mask].log_softmax(-1) for m in models)
            kl_sum += float((teacher.exp() * (teacher - student)).sum())
            ce_sum += float(-student.gather(1, labels[mask][:, None]).sum())
            tokens += int(mask.sum())
    assert logged["dev/loss"] == pytest.approx(kl_sum / tokens, rel=1e-4)
    assert logged["dev/ce"] == pytest.approx(ce_sum / tokens, rel=1e-4)
