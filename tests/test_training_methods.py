"""Every method trains a few steps on tiny random models and lowers its dev loss; SWITCH logs its teacher share."""
from __future__ import annotations

import json

import pytest
import torch
from test_training_support import MAX_LENGTH, MAX_PROMPT, _records, make_job, method, short_prompt, teacher, tokenizer
from transformers import AutoModelForCausalLM

from switch_core.data import tokenize_example
from switch_core.evaluation.generate import generate_responses
from switch_core.tracking import JsonlTracker, read_jsonl_events
from switch_core.training import SUMMARY_FILE, TRACE_FILE, TrainingSetupError, train


def _seqkd_examples() -> list:
    """The tiny teacher's sampled responses to the training prompts (docs/METHOD.md §6.3 sampling)."""
    records = _records()[:40]
    responses = generate_responses(
        teacher(), tokenizer(), [short_prompt(r) for r in records], max_prompt_length=MAX_PROMPT, max_new_tokens=12,
        temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=0, batch_size=20, seed=0,
    )
    return [
        tokenize_example(r.id, short_prompt(r), text, tokenizer(), max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
        for r, text in zip(records, responses) if text.strip()
    ]


def _dev_losses(events: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["metrics"]["dev/loss"]) for e in events if "dev/loss" in e["metrics"]]


@pytest.mark.parametrize("name", ["sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch"])
def test_method_lowers_dev_loss(name: str, tmp_path) -> None:
    train_examples = _seqkd_examples() if name == "seqkd" else None
    job = make_job(tmp_path, method(name), name=name, train=train_examples, with_teacher=name != "sft")
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(job, tracker=tracker)

    assert result.steps == 2 * (len(job.train) // 8)
    events = read_jsonl_events(tracker.path, "metrics")
    dev = _dev_losses(events)
    assert dev[0][0] == 0 and dev[-1][0] == result.steps
    assert dev[-1][1] < dev[0][1], f"{name}: dev loss {dev[0][1]:.5f} -> {dev[-1][1]:.5f}"
    train_steps = [e for e in events if "train/loss" in e["metrics"]]
    assert len(train_steps) == result.steps and all(e["metrics"]["train/loss"] > 0 for e in train_steps)
    shares = [e["metrics"]["rollout/teacher_share"] for e in train_steps if "rollout/teacher_share" in e["metrics"]]
    trace = job.state_dir / TRACE_FILE
    if name == "switch":
        assert len(shares) == result.steps and 0.0 < sum(shares) / len(shares) < 1.0
        rows = [json.loads(line) for line in trace.read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, result.steps + 1))
        for row, share in zip(rows, shares):  # the by-position trace adds up to the logged share of the step
            teacher = sum(s * n for s, n in zip(row["teacher_share_by_position"], row["count_by_position"]) if n)
            assert teacher / sum(row["count_by_position"]) == pytest.approx(share)
    else:
        assert shares == [] and not trace.exists()  # pure student sampling (ImitKD / GKD / DistiLLM) or none

    summary = json.loads((job.output_dir / SUMMARY_FILE).read_text())
    assert summary["best_step"] == result.best_step > 0 and summary["final"] == result.final_metrics
    assert "calibration" not in summary  # no τ0 search in this run
    reloaded = AutoModelForCausalLM.from_pretrained(job.output_dir)
    assert isinstance(reloaded, torch.nn.Module)


def test_distillm_with_phi_starting_positive_uses_rollouts_and_replay(tmp_path) -> None:
    job = make_job(tmp_path, method("distillm", init_threshold=1.0, replay_capacity=8), epochs=1)
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    train(job, tracker=tracker)
    sources = [k for e in read_jsonl_events(tracker.path, "metrics") for k in e["metrics"] if k.startswith("source/")]
    assert "source/rollout_store" in sources and "source/replay" in sources  # buffer fills, then replays


def test_switch_calibrates_tau0_when_not_given(tmp_path) -> None:
    job = make_job(tmp_path, method("switch"), rollout={"tau0": None, "target_teacher_share": 0.5}, max_steps=1)
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(job, tracker=tracker)
    params = read_jsonl_events(tracker.path, "params")
    assert params[0]["params"]["rollout.tau0_calibrated"] == pytest.approx(result.tau0)
    calibration = [e["metrics"] for e in read_jsonl_events(tracker.path, "metrics") if "calibration/tau0" in e["metrics"]]
    assert calibration[0]["calibration/tau0"] == pytest.approx(result.tau0) and result.tau0 > 0
    summary = json.loads((job.output_dir / SUMMARY_FILE).read_text())
    assert summary["tau0"] == pytest.approx(result.tau0)
    # the whole τ0 search is kept: the chosen τ0 is one of the tries, with the share it gave
    search = summary["calibration"]
    assert search["target_share"] == 0.5 and search["tau0"] == pytest.approx(result.tau0)
    tried = {round(t["tau0"], 12): t["share"] for t in search["history"]}
    assert tried[round(result.tau0, 12)] == pytest.approx(search["achieved_share"])
    assert calibration[0]["calibration/teacher_share"] == pytest.approx(search["achieved_share"])


def test_selection_by_rouge_keeps_best_rouge_checkpoint(tmp_path) -> None:
    job = make_job(tmp_path, method("sft"), with_teacher=False, select_by="rouge_l", eval_every=2, epochs=1)
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(job, tracker=tracker)
    rouge = [(e["step"], e["metrics"]["dev/rouge_l"]) for e in read_jsonl_events(tracker.path, "metrics")
             if "dev/rouge_l" in e["metrics"] and e["step"] > 0]
    best_value = max(v for _, v in rouge)
    assert result.best_metrics["dev/rouge_l"] == best_value
    assert result.best_step == next(s for s, v in rouge if v == best_value)  # the first step reaching it


def test_method_needing_teacher_without_one_fails_clearly(tmp_path) -> None:
    with pytest.raises(TrainingSetupError, match="needs the teacher"):
        train(make_job(tmp_path, method("kd"), with_teacher=False))
    with pytest.raises(TrainingSetupError, match="fewer than one batch"):
        train(make_job(tmp_path, method("sft"), with_teacher=False, train=make_job(tmp_path, method("sft")).train[:5]))
