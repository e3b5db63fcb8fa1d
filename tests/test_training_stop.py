"""The stop token in rollout training: the per-step diagnostics on hand-made rollouts, the stop token as a label that
carries the loss when pad id == stop id (as SmolLM2's), ``supervise_stop`` and mixing reference batches into SWITCH
training (docs/METHOD.md §6.10)."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from test_training_support import examples, make_job, method, student, teacher

from switch_core.config import MethodConfig, RolloutConfig
from switch_core.rollout import RolloutBatch, RolloutSettings
from switch_core.tracking import JsonlTracker, read_jsonl_events
from switch_core.training import Action, BatchSource, Sequence1D, batch_from_sequences, train
from switch_core.training.batches import TrainBatch
from switch_core.training.losses import LossSpec
from switch_core.training.objective import batch_loss
from switch_core.training.sources import batch_from_rollout
from switch_core.training.stop_tokens import append_stop, ends_with_stop, stop_statistics

STOP = 0  # the tiny tokenizer's eos, which is also its pad id


def _rollout_batch(teacher_logprobs: torch.Tensor | None = None) -> RolloutBatch:
    """Three rows, prompts left-padded (pad = stop = 0): row 0 stops at t = 2, row 1 is cut after 4 tokens, row 2
    stops at t = 0. On the stop tokens p(stop) = 0.001, 0.5 and q(stop) = 0.125, 0.25."""
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4]])
    prompt_mask = (torch.arange(3)[None, :] >= torch.tensor([[1], [0], [2]])).long()
    tokens = torch.tensor([[11, 12, STOP, STOP], [13, 14, 15, 16], [STOP, STOP, STOP, STOP]])
    mask = torch.tensor([[True, True, True, False], [True] * 4, [True, False, False, False]])
    student_lp = torch.zeros(3, 4)
    student_lp[0, 2], student_lp[2, 0] = math.log(0.125), math.log(0.25)
    if teacher_logprobs is None:
        teacher_logprobs = torch.zeros(3, 4)
        teacher_logprobs[0, 2], teacher_logprobs[2, 0] = math.log(0.001), math.log(0.5)
    zeros = torch.zeros(3, 4)
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=tokens, response_mask=mask,
        teacher_chosen=torch.zeros(3, 4, dtype=torch.bool), divergence=zeros, threshold=torch.zeros(4),
        sampling_logprobs=zeros, student_logprobs=student_lp, teacher_logprobs=teacher_logprobs,
    )


def _naive_logprob(model: torch.nn.Module, ids: list[int], target: int) -> float:
    """log softmax of the model's full-sequence logits at the last position of ``ids``, for ``target`` (float64)."""
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return float(torch.log_softmax(logits, dim=-1)[target])


def test_stop_statistics_by_hand() -> None:
    rb = _rollout_batch()
    assert ends_with_stop(rb, [STOP]).tolist() == [True, False, True]  # pad = stop: found by the mask, not the id
    assert ends_with_stop(rb, [99]).tolist() == [False, False, False]
    stats = stop_statistics(rb, [STOP], student=student(), teacher=teacher())
    assert stats["stopped_sequences"] == 2.0 and stats["stopped_tokens"] == 3.0 + 1.0
    assert stats["teacher_stop_prob_sum"] == pytest.approx(0.501, abs=1e-7)
    assert stats["student_stop_prob_sum"] == pytest.approx(0.375, abs=1e-7)


def test_stop_statistics_runs_the_model_the_rollout_did_not_run() -> None:
    """Pure student sampling never runs the teacher (NaN log-probabilities): p(stop) then comes from one teacher
    forward over the stopping rows, equal to a naive forward of each unpadded sequence."""
    t = teacher()
    rb = _rollout_batch(teacher_logprobs=torch.full((3, 4), math.nan))
    stats = stop_statistics(rb, [STOP], student=student(), teacher=t)
    expected = math.exp(_naive_logprob(t, [5, 6, 11, 12], STOP)) + math.exp(_naive_logprob(t, [4], STOP))
    assert stats["teacher_stop_prob_sum"] == pytest.approx(expected, rel=1e-5)
    assert stats["student_stop_prob_sum"] == pytest.approx(0.375, abs=1e-7)  # the rollout's own values


def test_the_emitted_stop_token_is_a_label_that_carries_the_loss_when_pad_equals_stop() -> None:
    """SmolLM2 and the tiny models share the pad and stop id: the stop token a rollout emits must still be a label
    (loss mask on), and removing that one label must lower the summed loss by exactly its per-token loss."""
    rb = _rollout_batch()
    batch = batch_from_rollout(rb)
    lp = 3
    assert batch.labels[0, lp + 2] == STOP and batch.labels[0, lp + 3] == -100  # stop labelled, padding not
    assert batch.labels[2, lp] == STOP and (batch.labels[2, lp + 1 :] == -100).all()
    assert batch.loss_mask[0, lp + 1] and batch.loss_mask[2, lp - 1]  # the positions predicting the stop tokens
    assert batch.num_loss_tokens == 3 + 4 + 1
    s = student()
    without_stop = batch.labels.clone()
    without_stop[0, lp + 2] = -100
    without_stop[2, lp] = -100
    reduced = TrainBatch(batch.input_ids, batch.attention_mask, without_stop)
    with torch.no_grad():
        full = float(batch_loss(s, None, batch, LossSpec("ce"), chunk_tokens=3))
        less = float(batch_loss(s, None, reduced, LossSpec("ce"), chunk_tokens=3))
    stop_ce = -_naive_logprob(s, [5, 6, 11, 12], STOP) - _naive_logprob(s, [4], STOP)
    assert full - less == pytest.approx(stop_ce, rel=1e-4)  # −log q(stop) there: it moves with the stop logit
    t = teacher()
    with torch.no_grad():  # the distillation losses too: the stop position adds its KL(p ‖ q) > 0
        kd_full = float(batch_loss(s, t, batch, LossSpec("fkl"), chunk_tokens=3))
        kd_less = float(batch_loss(s, t, reduced, LossSpec("fkl"), chunk_tokens=3))
    assert kd_full - kd_less > 1e-3


def test_append_stop_and_stop_labels_add_the_stop_cross_entropy() -> None:
    cut = Sequence1D(torch.tensor([5, 6]), torch.tensor([11, 12, 13]))
    stopped = Sequence1D(torch.tensor([7]), torch.tensor([14, STOP]))
    appended = append_stop([cut, stopped], [STOP, 99])
    assert appended[0].response_ids.tolist() == [11, 12, 13, STOP]
    assert appended[1].response_ids.tolist() == [14, STOP]
    with pytest.raises(ValueError, match="stop token id"):
        append_stop([cut], [])
    batch = batch_from_sequences(appended, pad_token_id=STOP)  # prompts left-padded to 2, responses right to 4
    marked = batch.with_stop_labels([STOP])
    assert marked.stop_labels.nonzero().tolist() == [[0, 5], [1, 3]]  # one stop label per row, padding never
    s, t = student(), teacher()
    spec = LossSpec("fkl")
    with torch.no_grad():
        plain = float(batch_loss(s, t, batch, spec, chunk_tokens=2))
        terms: dict[str, torch.Tensor] = {}
        supervised = float(batch_loss(s, t, marked.rows(0, 2), spec, chunk_tokens=2, terms=terms))
    stop_ce = -_naive_logprob(s, [5, 6, 11, 12, 13], STOP) - _naive_logprob(s, [7, 14], STOP)
    assert supervised - plain == pytest.approx(stop_ce, rel=1e-4)
    assert float(terms["stop_ce"]) == pytest.approx(stop_ce, rel=1e-4)
    with pytest.raises(ValueError, match="without a label"):
        TrainBatch(batch.input_ids, batch.attention_mask, batch.labels,
                   stop_labels=torch.ones_like(batch.labels, dtype=torch.bool))
    assert TrainBatch.from_state_dict(marked.state_dict()).stop_labels.equal(marked.stop_labels)


def test_supervise_stop_rollouts_end_with_a_supervised_stop_token() -> None:
    """Rollouts of 3 new tokens from these tiny models are all cut (none stops): every row of the trained batch gets
    the stop token appended as its 4th label, marked for the cross-entropy; the rollout's teacher logits are not kept
    (they would not cover the appended position)."""
    switch = method("switch", supervise_stop=True)
    settings = RolloutSettings.from_config(
        RolloutConfig(max_new_tokens=3, tau0=0.1), switch, pad_token_id=STOP, stop_token_ids=[STOP]
    )
    source = BatchSource(switch, student=student(), teacher=teacher(), settings=settings, pad_token_id=STOP, seed=0,
                         total_steps=4, rollout_batch_size=4, keep_teacher_logits=True)
    out = source.next(0, examples()[:4], offset=0)
    batch = out.batch
    assert out.action is Action.ROLLOUT and batch.teacher_logits is None
    last = (batch.labels != -100).long().cumsum(1).argmax(1)  # each row's last label
    assert (batch.labels[torch.arange(4), last] == STOP).all()
    assert batch.stop_labels.sum(1).tolist() == [1, 1, 1, 1] and batch.stop_labels[torch.arange(4), last].all()
    assert (batch.labels != -100).sum(1).tolist() == [4, 4, 4, 4]
    assert out.stats["rollout_sequences"] == 4.0 and out.stats["stopped_sequences"] == 0.0
    assert out.stats["rollout_tokens"] == 12.0  # the diagnostics count what the rollout wrote, not the appended token
    with pytest.raises(Exception, match="stop token"):
        BatchSource(switch, student=student(), teacher=teacher(), settings=RolloutSettings(pad_token_id=0, tau0=0.1),
                    pad_token_id=0, seed=0, total_steps=4, rollout_batch_size=4, keep_teacher_logits=False)


def test_supervise_stop_is_only_for_rollout_data() -> None:
    for data in ("rollout", "mixed", "adaptive"):
        assert MethodConfig(data=data, supervise_stop=True).supervise_stop
    with pytest.raises(ValidationError, match="supervise_stop"):
        MethodConfig(data="ground_truth", supervise_stop=True)
    with pytest.raises(ValidationError, match="supervise_stop"):
        MethodConfig(loss="rkl", data="policy_gradient", supervise_stop=True)
    assert not any(m.supervise_stop for m in (method(n) for n in ("imitkd", "gkd", "distillm", "switch", "minillm")))


def test_switch_with_the_adaptive_schedule_mixes_switch_rollouts_and_reference_batches(tmp_path) -> None:
    """methods.switch.data: adaptive (DistiLLM's schedule with the SWITCH sampler): with φ0 = 0.5 the run trains on
    fresh SWITCH rollouts (teacher share logged, stop diagnostics logged) and on reference batches."""
    switch = method("switch", data="adaptive", replay=True, init_threshold=0.5)
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(make_job(tmp_path, switch, max_steps=6, log_every=1), tracker=tracker)
    steps = [e["metrics"] for e in read_jsonl_events(tracker.path, "metrics") if "train/loss" in e["metrics"]]
    assert len(steps) == 6 == result.steps
    rolled = [m for m in steps if m.get("source/rollout_store") == 1.0]
    assert rolled and any(m.get("source/ground_truth") == 1.0 for m in steps)
    assert all("rollout/teacher_share" in m and "rollout/stop_rate" in m for m in rolled)
    assert result.gate is not None and not result.gate["position_switch"]  # τ0 = 0.1: a gate at every position
