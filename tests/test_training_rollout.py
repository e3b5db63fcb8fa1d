"""Rollout batches: the teacher logits kept from a SWITCH rollout equal a fresh teacher forward over the finished
mixed sequence; rollouts keep the KV cache on under gradient checkpointing (docs/METHOD.md §A.1)."""
from __future__ import annotations

import pytest
import torch
from test_training_support import examples, method, student, teacher, tokenizer

from switch_core.config import RolloutConfig
from switch_core.rollout import RolloutSettings
from switch_core.training import BatchSource, LossSpec, batch_loss
from switch_core.training.sources import Action


def _source(
    model: torch.nn.Module, teach: torch.nn.Module, *, rollout_batch_size: int, keep: bool, strategy: str = "switch",
    engine: str = "speculative",
) -> BatchSource:
    cfg = RolloutConfig(strategy=strategy, tau0=0.1, max_new_tokens=10, engine=engine)
    switch = method("switch")
    pad = tokenizer().pad_token_id
    settings = RolloutSettings.from_config(cfg, switch, pad_token_id=pad, stop_token_ids=[tokenizer().eos_token_id])
    return BatchSource(
        switch, student=model, teacher=teach, settings=settings, pad_token_id=pad, seed=5, total_steps=10,
        rollout_batch_size=rollout_batch_size, keep_teacher_logits=keep,
    )


@pytest.mark.parametrize("rollout_batch_size", [6, 4])  # one rollout call, or two packed together
def test_kept_teacher_logits_equal_fresh_teacher_forward(rollout_batch_size: int) -> None:
    model, teach = student(), teacher()
    out = _source(model, teach, rollout_batch_size=rollout_batch_size, keep=True).next(0, examples()[:6], offset=0)
    assert out.action is Action.ROLLOUT
    batch = out.batch
    assert out.stats["teacher_tokens"] > 0 and out.stats["teacher_tokens"] < out.stats["rollout_tokens"]  # mixed
    assert batch.num_loss_tokens == out.stats["rollout_tokens"]
    kept = batch.packed_teacher_logits()
    with torch.no_grad():
        fresh = teach(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids).logits[:, :-1][batch.loss_mask]
    assert kept.shape == fresh.shape
    torch.testing.assert_close(kept.float(), fresh, rtol=1e-4, atol=1e-4)

    spec = LossSpec("skl", alpha=0.1)
    with torch.no_grad():
        reused = batch_loss(model, teach, batch, spec, chunk_tokens=16)
        recomputed = batch_loss(model, teach, type(batch)(batch.input_ids, batch.attention_mask, batch.labels), spec,
                                chunk_tokens=16)
    assert float(reused) == pytest.approx(float(recomputed), rel=1e-4)


def test_same_rollout_whatever_the_chunking() -> None:
    """Rollout random streams are keyed by global position: chunks of 2 at offsets 0/2 give the rows of one call."""
    model, teach = student(), teacher()
    whole = _source(model, teach, rollout_batch_size=2, keep=False).next(3, examples()[:4], offset=0).batch
    second_half = _source(model, teach, rollout_batch_size=2, keep=False).next(3, examples()[2:4], offset=2).batch
    width = second_half.input_ids.shape[1]
    assert torch.equal(whole.labels[2:, -width:], second_half.labels)


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
def test_rollouts_use_the_kv_cache_under_gradient_checkpointing(engine: str) -> None:
    model, teach = student(), teacher()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls: list[tuple[bool, object, int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((module.training, kwargs.get("use_cache"), kwargs["input_ids"].shape[1]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        source = _source(model, teach, rollout_batch_size=4, keep=True, engine=engine)
        source.next(0, examples()[:4], offset=0)
    finally:
        handle.remove()
    assert len(calls) > 2
    assert all(not training and use_cache is True for training, use_cache, _ in calls)
    # after the prompt, one new token per step (lockstep) or at most one draft chunk per call: the cache is reused
    longest = 1 if engine == "lockstep" else source.settings.max_draft_tokens
    assert all(width <= longest for _, _, width in calls[1:])
    assert model.training  # the training flag is restored after the rollout


def test_student_rollouts_never_run_the_teacher_while_decoding() -> None:
    """Pure student sampling keeps no teacher logits: one teacher forward over the finished batch is cheaper than
    T incremental teacher steps, so the loss runs the teacher itself."""
    model, teach = student(), teacher()
    calls: list[int] = []
    handle = teach.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        out = _source(model, teach, rollout_batch_size=4, keep=True, strategy="student").next(0, examples()[:4], 0)
    finally:
        handle.remove()
    assert calls == [] and out.batch.teacher_logits is None
    assert out.stats["teacher_tokens"] == 0 and out.stats["rollout_tokens"] > 0


@pytest.mark.parametrize("strategy", ["skd", "adaswitch"])
def test_peer_strategies_train_on_rollouts_with_kept_teacher_logits(strategy: str) -> None:
    """SKD and AdaSwitch rollouts run both models, so the loss reuses the teacher logits kept during decoding; the
    AdaSwitch gate has its JSD whatever the method's compute_divergence."""
    model, teach = student(), teacher()
    source = _source(model, teach, rollout_batch_size=4, keep=True, strategy=strategy)
    assert source.settings.compute_divergence == (strategy == "adaswitch")
    out = source.next(0, examples()[:4], offset=0)
    assert out.action is Action.ROLLOUT and out.stats["rollout_tokens"] > 0
    batch = out.batch
    kept = batch.packed_teacher_logits()
    with torch.no_grad():
        fresh = teach(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids).logits[:, :-1][batch.loss_mask]
    torch.testing.assert_close(kept.float(), fresh, rtol=1e-4, atol=1e-4)
