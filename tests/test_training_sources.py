"""Batch sources (GKD mix, DistiLLM adaptive schedule), replay buffer, batch packing, LR schedule, tracker, progress."""
from __future__ import annotations

import io
import math

import pytest
import torch
from test_training_support import method, student

from switch_core.config import Config, OptimConfig, RolloutConfig, TrackingConfig
from switch_core.rollout import RolloutSettings
from switch_core.tracking import JsonlTracker, NullTracker, Tracker, read_jsonl_events, tracker_from_config
from switch_core.training import (
    Action,
    BatchSource,
    ReplayBuffer,
    Sequence1D,
    batch_from_sequences,
    choose_action,
)
from switch_core.training.optim import build_optimizer, build_scheduler, cosine_lr
from switch_core.training.progress import Progress
from switch_core.training.seeding import Stream, derive_seed, generator

ADAPTIVE = method("distillm")  # data=adaptive, replay, capacity 1000
SETTINGS = RolloutSettings.from_config(RolloutConfig(tau0=0.1), ADAPTIVE, pad_token_id=0, stop_token_ids=[0])


@pytest.mark.parametrize(
    ("r", "phi", "buffered", "expected"),
    [
        (0.0, 0.0, 0, Action.GROUND_TRUTH),  # φ = 0 (the GPT-2/OPT start): always ground truth
        (0.30, 0.5, 0, Action.ROLLOUT_STORE),  # r < s = 0.5·(1 − 1/10) = 0.45
        (0.47, 0.5, 10, Action.ROLLOUT_STORE),  # s <= r < φ, buffer not full: generate
        (0.47, 0.5, 1000, Action.REPLAY),  # s <= r < φ, buffer full: replay
        (0.60, 0.5, 1000, Action.GROUND_TRUTH),  # r >= φ
    ],
)
def test_distillm_adaptive_schedule(r: float, phi: float, buffered: int, expected: Action) -> None:
    assert choose_action(ADAPTIVE, r=r, step=1, total_steps=10, phi=phi, buffered=buffered) is expected


def test_adaptive_generation_probability_decreases_with_step() -> None:
    # s = φ·(1 − k/K): at the last step s = 0, so with a full buffer r < φ always replays
    assert choose_action(ADAPTIVE, r=0.01, step=10, total_steps=10, phi=0.5, buffered=1000) is Action.REPLAY
    assert choose_action(ADAPTIVE, r=0.01, step=1, total_steps=10, phi=0.5, buffered=1000) is Action.ROLLOUT_STORE


@pytest.mark.parametrize(("replay", "fresh"), [(True, Action.ROLLOUT_REPLAY), (False, Action.ROLLOUT)])
def test_gkd_mix(replay: bool, fresh: Action) -> None:
    gkd = method("gkd", replay=replay)  # λ = 0.5
    assert choose_action(gkd, r=0.49, step=3, total_steps=10, phi=0.0, buffered=0) is fresh
    assert choose_action(gkd, r=0.51, step=3, total_steps=10, phi=0.0, buffered=0) is Action.GROUND_TRUTH
    assert choose_action(method("imitkd"), r=0.99, step=3, total_steps=10, phi=0.0, buffered=0) is Action.ROLLOUT_REPLAY
    assert choose_action(method("kd"), r=0.0, step=3, total_steps=10, phi=0.0, buffered=0) is Action.GROUND_TRUTH


def test_adaptive_phi_update_follows_distillm() -> None:
    source = BatchSource(
        method("distillm", loss_eps=0.1), student=student(), teacher=student(), settings=SETTINGS, pad_token_id=0,
        seed=0, total_steps=10, rollout_batch_size=4, keep_teacher_logits=False,
    )
    source.after_evaluation(2.00)  # before training: only recorded
    assert (source.phi, source.prev_dev_loss) == (0.0, 2.00)
    source.after_evaluation(2.05)  # rose by < ε: nothing, prev stays
    assert (source.phi, source.prev_dev_loss) == (0.0, 2.00)
    source.after_evaluation(2.15)  # rose by >= ε: φ + 0.1, prev updated
    assert source.phi == pytest.approx(0.1) and source.prev_dev_loss == 2.15
    for value in range(20):
        source.after_evaluation(3.0 + value)
    assert source.phi == 1.0  # capped
    restored = BatchSource(
        method("distillm"), student=student(), teacher=student(), settings=SETTINGS, pad_token_id=0, seed=0,
        total_steps=10, rollout_batch_size=4, keep_teacher_logits=False,
    )
    restored.load_state_dict(source.state_dict())
    assert (restored.phi, restored.prev_dev_loss) == (source.phi, source.prev_dev_loss)


def test_adaptive_without_replay_is_rejected() -> None:
    with pytest.raises(ValueError, match="replay: true"):
        BatchSource(
            method("distillm", replay=False), student=student(), teacher=student(), settings=SETTINGS, pad_token_id=0,
            seed=0, total_steps=10, rollout_batch_size=4, keep_teacher_logits=False,
        )


def _seq(i: int) -> Sequence1D:
    return Sequence1D(torch.tensor([i, i + 1]), torch.tensor([100 + i]))


def test_replay_buffer_is_fifo_and_draws_without_replacement() -> None:
    buffer = ReplayBuffer(capacity=5)
    buffer.push(_seq(i) for i in range(7))  # 0 and 1 fall out
    assert len(buffer) == 5 and buffer.full
    drawn = buffer.sample(5, generator(0, Stream.REPLAY, 1))
    assert sorted(int(s.prompt_ids[0]) for s in drawn) == [2, 3, 4, 5, 6]
    again = buffer.sample(3, generator(0, Stream.REPLAY, 1))
    assert [int(s.prompt_ids[0]) for s in again] == [int(s.prompt_ids[0]) for s in drawn[:3]]
    with pytest.raises(ValueError, match="cannot draw 6"):
        buffer.sample(6, generator(0, Stream.REPLAY, 1))


def test_replay_buffer_state_round_trip() -> None:
    buffer = ReplayBuffer(capacity=4)
    buffer.push(_seq(i) for i in range(3))
    copy = ReplayBuffer(capacity=4)
    copy.load_state_dict(buffer.state_dict())
    gen_a, gen_b = generator(1, Stream.REPLAY, 0), generator(1, Stream.REPLAY, 0)
    assert [s.prompt_ids.tolist() for s in copy.sample(3, gen_a)] == [s.prompt_ids.tolist() for s in buffer.sample(3, gen_b)]
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=9).load_state_dict(buffer.state_dict())


def test_batch_from_sequences_layout_and_teacher_logits_alignment() -> None:
    seqs = [Sequence1D(torch.tensor([1, 2, 3]), torch.tensor([7, 0])), Sequence1D(torch.tensor([4]), torch.tensor([8, 9, 0]))]
    logits = [torch.full((2, 5), 1.0), torch.full((3, 5), 2.0)]
    batch = batch_from_sequences(seqs, pad_token_id=0, teacher_logits=logits)
    assert batch.input_ids.tolist() == [[1, 2, 3, 7, 0, 0], [0, 0, 4, 8, 9, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[-100, -100, -100, 7, 0, -100], [-100, -100, -100, 8, 9, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    packed = batch.packed_teacher_logits()  # one row per loss token, row-major: 2 of sequence 0, then 3 of sequence 1
    assert packed[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]


def test_cosine_schedule_hand_computed() -> None:
    values = [cosine_lr(k, lr=1.0, lr_min=0.0, warmup_steps=0, total_steps=4) for k in range(5)]
    assert values == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0])
    assert cosine_lr(0, lr=1.0, lr_min=0.1, warmup_steps=2, total_steps=6) == pytest.approx(0.5)
    assert cosine_lr(1, lr=1.0, lr_min=0.1, warmup_steps=2, total_steps=6) == pytest.approx(1.0)
    assert cosine_lr(4, lr=1.0, lr_min=0.1, warmup_steps=2, total_steps=6) == pytest.approx(0.55)
    assert cosine_lr(6, lr=1.0, lr_min=0.1, warmup_steps=2, total_steps=6) == pytest.approx(0.1)


def test_scheduler_and_optimizer_groups() -> None:
    model = student()
    optim = OptimConfig(lr=2e-3, lr_min=1e-5, warmup_steps=1, weight_decay=0.01)
    optimizer = build_optimizer(model, optim)
    decays = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert set(decays) == {0.01, 0.0}  # matrices decayed, norm weights not
    assert all(p.dim() >= 2 for p in optimizer.param_groups[0]["params"])
    scheduler = build_scheduler(optimizer, optim, total_steps=5)
    for k in range(5):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(k, lr=2e-3, lr_min=1e-5, warmup_steps=1, total_steps=5))
        optimizer.step()
        scheduler.step()


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(10, Stream.ROLLOUT, 3, 4) == derive_seed(10, Stream.ROLLOUT, 3, 4)
    seeds = {derive_seed(10, s, k) for s in Stream for k in range(3)}
    assert len(seeds) == len(Stream) * 3


def test_jsonl_tracker_writes_one_line_per_event(tmp_path) -> None:
    tracker = JsonlTracker(tmp_path / "t" / "events.jsonl")
    assert isinstance(tracker, Tracker) and isinstance(NullTracker(), Tracker)
    tracker.log_params({"optim.lr": 5e-4, "path": tmp_path})
    tracker.log_metrics({"train/loss": 1.5, "dev/rouge_l": float("nan")}, step=3)
    tracker.log_artifact(tmp_path / "model")
    tracker.set_tags({"method": "switch"})
    events = read_jsonl_events(tracker.path)
    assert [e["event"] for e in events] == ["params", "metrics", "artifact", "tags"]
    assert events[0]["params"] == {"optim.lr": 5e-4, "path": str(tmp_path)}
    assert events[1]["step"] == 3 and events[1]["metrics"] == {"train/loss": 1.5, "dev/rouge_l": "nan"}
    assert read_jsonl_events(tracker.path, "tags")[0]["tags"] == {"method": "switch"}
    none = Config(tracking=TrackingConfig(backend="none"))
    jsonl = Config(tracking=TrackingConfig(backend="jsonl"))
    assert isinstance(tracker_from_config(none, tmp_path / "x.jsonl", name="x"), NullTracker)
    assert isinstance(tracker_from_config(jsonl, tmp_path / "x.jsonl", name="x"), JsonlTracker)


def test_progress_plain_lines_every_n_steps() -> None:
    stream = io.StringIO()  # not a terminal: plain lines
    progress = Progress("kd", total_steps=5, start_step=0, log_every=2, stream=stream)
    for step in range(1, 6):
        progress.update(step, loss=1.0 / step, tokens_per_second=1234.0, teacher_share=0.5)
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines] == ["[kd] step 2/5", "[kd] step 4/5", "[kd] step 5/5"]
    assert "loss 0.5000" in lines[0] and "tok/s 1,234" in lines[0] and "share 0.50" in lines[0] and "eta" in lines[0]
