"""MiniLLM (docs/METHOD.md §6.5): rewards, advantages, importance weights and the PPO loss against hand-computed values;
the policy gradient against the exact gradient of the sequence-level reverse KL; training, resume and the CLI."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_training_support import examples, make_job, method, student, teacher, tokenizer

from switch_core.cli import main
from switch_core.config import ConfigError, RolloutConfig, load_config
from switch_core.data.tokenize import left_pad
from switch_core.rollout import RolloutSettings, rollout
from switch_core.tracking import JsonlTracker, NullTracker, read_jsonl_events
from switch_core.training import (
    Action,
    BatchSource,
    LossSpec,
    PolicyTokens,
    batch_loss,
    choose_action,
    train,
)
from switch_core.training.lm_corpus import PT_KD_RATIO, LMCorpusError, lm_batch, load_lm_corpus
from switch_core.training.losses import token_loss_terms
from switch_core.training.policy_gradient import (
    PolicyGradientError,
    clipped_policy_loss,
    importance_weights,
    normalised_returns,
    rollout_policy_tokens,
    token_rewards,
    whiten,
)
from switch_core.training.sources import batch_from_rollout
from switch_core.training.state import latest_state

F64 = torch.float64
# Two rows of a hand-made rollout: 3 response tokens and 2 (+ one padding column).
TEACHER_LP = torch.tensor([[-1.0, -2.0, -0.5], [-0.25, -3.0, 0.0]], dtype=F64)
STUDENT_LP = torch.tensor([[-1.5, -1.0, -0.5], [-0.75, -1.0, 0.0]], dtype=F64)
MASK = torch.tensor([[True, True, True], [True, True, False]])


# ---------------------------------------------------------------------------------------------- pure functions


def test_rewards_returns_and_advantages_on_a_hand_computed_case() -> None:
    # r = (log p − log q) / 0.5: row 0 [0.5/0.5, −1/0.5, 0] = [1, −2, 0]; row 1 [0.5/0.5, −2/0.5] = [1, −4]
    rewards = token_rewards(TEACHER_LP, STUDENT_LP, MASK, reward_scaling=0.5, reward_clip=100.0)
    assert rewards.tolist() == [[1.0, -2.0, 0.0], [1.0, -4.0, 0.0]]
    # clipped to ±1.5: −2 → −1.5, −4 → −1.5
    clipped = token_rewards(TEACHER_LP, STUDENT_LP, MASK, reward_scaling=0.5, reward_clip=1.5)
    assert clipped.tolist() == [[1.0, -1.5, 0.0], [1.0, -1.5, 0.0]]
    # γ = 0.5. Row 0: R2 = 0, R1 = −2 + 0.5·0 = −2, R0 = 1 + 0.5·(−2) = 0; remaining lengths 3, 2, 1 → [0, −1, 0].
    # Row 1: R1 = −4, R0 = 1 + 0.5·(−4) = −1; remaining lengths 2, 1 → [−0.5, −4].
    returns = normalised_returns(rewards, MASK, gamma=0.5)
    assert returns.tolist() == [[0.0, -1.0, 0.0], [-0.5, -4.0, 0.0]]
    # mean of the 5 tokens = −5.5 / 5 = −1.1; deviations 1.1, 0.1, 1.1, 0.6, −2.9; squares sum 11.2 → var 2.24
    std = math.sqrt(2.24 + 1e-8)
    expected = [[1.1 / std, 0.1 / std, 1.1 / std], [0.6 / std, -2.9 / std, 0.0]]
    torch.testing.assert_close(whiten(returns, MASK), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_whitening_statistics_are_summed_over_processes() -> None:
    # Two "processes" holding one row each: reducing their sums gives the statistics of the whole batch.
    returns = normalised_returns(token_rewards(TEACHER_LP, STUDENT_LP, MASK, reward_scaling=0.5, reward_clip=100.0),
                                 MASK, gamma=0.5)
    both = whiten(returns, MASK)
    rows = [(returns[i : i + 1], MASK[i : i + 1]) for i in range(2)]
    calls: list[int] = []

    def reduce_sum(process: int):
        def reduce(tensor: torch.Tensor) -> torch.Tensor:  # what an all-reduce returns: this + the other process's
            other_values, other_mask = rows[1 - process]
            calls.append(process)
            if tensor.dim() == 1:  # [count, sum]
                return tensor + torch.stack([other_mask.sum().double(), other_values[other_mask].sum()])
            mean = (returns[MASK].sum() / MASK.sum()).double()
            return tensor + (other_values[other_mask] - mean).square().sum()
        return reduce

    for process, (values, mask) in enumerate(rows):
        torch.testing.assert_close(whiten(values, mask, reduce_sum=reduce_sum(process)), both[process : process + 1])
    assert len(calls) == 4


def test_returns_divide_by_the_remaining_length_of_each_row() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    # γ = 1: reward-to-go 3, 2, 1 over remaining lengths 3, 2, 1 → 1 everywhere; the padded reward is ignored
    assert normalised_returns(rewards, mask, gamma=1.0).tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_policy_values_reject_missing_log_probabilities() -> None:
    teacher_lp = TEACHER_LP.clone()
    teacher_lp[0, 1] = math.nan  # the rollout did not run the teacher
    with pytest.raises(PolicyGradientError, match="teacher_logprobs is not finite"):
        token_rewards(teacher_lp, STUDENT_LP, MASK, reward_scaling=0.5, reward_clip=1.0)
    with pytest.raises(PolicyGradientError, match="gamma"):
        normalised_returns(TEACHER_LP, MASK, gamma=1.5)


def test_clipped_policy_loss_on_a_hand_computed_case() -> None:
    # tokens: (ratio q/q_old, advantage, weight) -> ρ = w·ratio, L = max(−A·ρ, −A·clip(ρ, 0.8, 1.2))
    #   a: (1.5,  1, 1)   ρ 1.5: max(−1.5, −1.2) = −1.2, clipped (no gradient)
    #   b: (1.5, −1, 1)   ρ 1.5: max(1.5, 1.2)   =  1.5, dL/dlogq = −A·ρ = 1.5
    #   c: (1.0,  2, 0.5) ρ 0.5: max(−1.0, −1.6) = −1.0, dL/dlogq = −1.0
    #   d: (1.0, −2, 0.5) ρ 0.5: max(1.0, 1.6)   =  1.6, clipped
    #   e: (1.0, 0.5, 1)  ρ 1.0: −0.5,                    dL/dlogq = −0.5
    old = torch.tensor([-1.0, -2.0, -0.3, -0.7, -1.2], dtype=F64)
    logprobs = (old + torch.log(torch.tensor([1.5, 1.5, 1.0, 1.0, 1.0], dtype=F64))).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5], dtype=F64)
    weights = torch.tensor([1.0, 1.0, 0.5, 0.5, 1.0], dtype=F64)
    loss, clipped = clipped_policy_loss(logprobs, old, advantages, weights, clip=0.2)
    torch.testing.assert_close(loss.detach(), torch.tensor([-1.2, 1.5, -1.0, 1.6, -0.5], dtype=F64))
    assert clipped.tolist() == [True, False, False, True, False]
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([0.0, 1.5, -1.0, 0.0, -0.5], dtype=F64))
    with pytest.raises(PolicyGradientError, match="clip"):
        clipped_policy_loss(logprobs, old, advantages, weights, clip=1.0)


def test_token_loss_is_policy_loss_plus_exact_reverse_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    s_logits = torch.randn(4, 7, generator=gen, dtype=F64, requires_grad=True)
    t_logits = torch.randn(4, 7, generator=gen, dtype=F64)
    targets = torch.tensor([0, 3, 6, 2])
    log_q = torch.log_softmax(s_logits.detach(), -1)
    old = log_q[torch.arange(4), targets] - torch.tensor([0.1, -0.3, 0.0, 0.25], dtype=F64)
    advantages = torch.tensor([1.0, -0.5, 0.3, -2.0], dtype=F64)
    weights = torch.tensor([1.0, 0.9, 1.1, 0.7], dtype=F64)
    zeros = torch.zeros_like(old)
    policy = PolicyTokens(old_logprobs=old, teacher_logprobs=zeros, rewards=zeros, advantages=advantages, weights=weights)
    terms = token_loss_terms(LossSpec("rkl", policy_gradient=True, ppo_clip=0.2), s_logits, targets, t_logits, policy)
    # naive float64 references
    ratio = (log_q[torch.arange(4), targets] - old).exp() * weights
    pg = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))
    q, log_p = log_q.exp(), torch.log_softmax(t_logits, -1)
    reverse_kl = torch.tensor([sum(q[i, v] * (log_q[i, v] - log_p[i, v]) for v in range(7)) for i in range(4)])
    torch.testing.assert_close(terms["pg"].detach(), pg)
    torch.testing.assert_close(terms["reg"].detach(), reverse_kl)
    torch.testing.assert_close(terms["loss"].detach(), pg + reverse_kl)
    no_reg = LossSpec("rkl", policy_gradient=True, single_step_reg=False)
    assert "reg" not in token_loss_terms(no_reg, s_logits, targets, None, policy)  # no teacher needed


# ---------------------------------------------------------------------------------------------- with the engine


def _rollout(strategy: str, alpha: float, *, n: int = 6, steps: int = 6, seed: int = 0):
    prompts = [e.prompt_ids for e in examples()[:n]]
    ids, mask = left_pad(prompts, 0)
    settings = RolloutSettings(
        pad_token_id=0, strategy=strategy, mixture_alpha=alpha, max_new_tokens=steps, compute_divergence=True,
        stop_token_ids=(tokenizer().eos_token_id,),
    )
    return rollout(student(), teacher(), ids, mask, settings, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", ["mixture", "student"])
def test_importance_weights_are_exactly_one_without_teacher_mixing(strategy: str) -> None:
    rb = _rollout(strategy, 0.0)
    weights = importance_weights(rb.student_logprobs, rb.sampling_logprobs, rb.response_mask)
    assert torch.equal(weights[rb.response_mask], torch.ones(int(rb.response_mask.sum())))


def test_importance_weights_of_teacher_mixed_rollouts_are_q_over_the_mixture() -> None:
    rb = _rollout("mixture", 0.2)
    weights = importance_weights(rb.student_logprobs, rb.sampling_logprobs, rb.response_mask)
    ids, mask = rb.full_sequences()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    start = rb.prompt_ids.shape[1] - 1
    with torch.no_grad():
        probs = {
            name: torch.softmax(model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double(), -1)
            for name, model in (("q", student()), ("p", teacher()))
        }
    token_probs = {k: v[:, start:-1].gather(-1, rb.tokens[..., None]).squeeze(-1) for k, v in probs.items()}
    expected = token_probs["q"] / (0.2 * token_probs["p"] + 0.8 * token_probs["q"])
    valid = rb.response_mask
    torch.testing.assert_close(weights[valid].double(), expected[valid], rtol=1e-4, atol=1e-6)
    assert rb.teacher_chosen[valid].any() and (weights[valid] != 1).any()


def test_policy_gradient_points_along_the_exact_reverse_kl_gradient() -> None:
    """Averaged over many student rollouts, the gradient of the PPO loss (at ρ = 1) has a large positive cosine with
    the exact gradient of the sequence-level KL(q ‖ p), enumerated over every 2-token response in float64."""
    model, frozen = student(), teacher()
    prompt = torch.tensor([examples()[40].prompt_ids])
    params = list(model.parameters())

    def log_probs(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.double(), -1)

    vocab = model.config.vocab_size
    log_q1, log_p1 = log_probs(model, prompt)[0, -1], log_probs(frozen, prompt)[0, -1].detach()
    second = torch.cat([prompt.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)  # prompt + every first token
    log_q2, log_p2 = log_probs(model, second)[:, -1], log_probs(frozen, second)[:, -1].detach()
    inner = (log_q2.exp() * (log_q2 - log_p2)).sum(-1)
    exact_kl = (log_q1.exp() * (log_q1 - log_p1 + inner)).sum()  # KL over sequences y1 y2 by the chain rule
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_kl, params)])

    count = 2048
    settings = RolloutSettings(pad_token_id=0, strategy="student", max_new_tokens=2, compute_divergence=True)
    rb = rollout(model, frozen, prompt.repeat(count, 1), torch.ones((count, prompt.shape[1]), dtype=torch.long),
                 settings, generator=torch.Generator().manual_seed(0))
    policy, _ = rollout_policy_tokens(
        rb.student_logprobs, rb.teacher_logprobs, rb.sampling_logprobs, rb.response_mask, gamma=0.95,
        reward_scaling=0.5, reward_clip=100.0,
    )
    batch = dataclasses.replace(batch_from_rollout(rb), policy=policy)
    model.zero_grad()
    spec = LossSpec("rkl", policy_gradient=True, single_step_reg=False)
    batch_loss(model, None, batch, spec, chunk_tokens=4096, scale=1.0 / batch.num_loss_tokens,
               backward=lambda loss: loss.backward())
    estimate = torch.cat([p.grad.flatten().double() for p in params])
    assert float(torch.nn.functional.cosine_similarity(estimate, exact, dim=0)) > 0.7


@pytest.mark.parametrize("chunk", [8, 3])  # one rollout call, or three packed together (rows of unequal width)
def test_stored_policy_values_line_up_with_the_batch_tokens(chunk: int) -> None:
    model, frozen = student(), teacher()
    minillm = method("minillm")
    settings = RolloutSettings.from_config(RolloutConfig(max_new_tokens=10), minillm, pad_token_id=0,
                                           stop_token_ids=[tokenizer().eos_token_id])
    source = BatchSource(minillm, student=model, teacher=frozen, settings=settings, pad_token_id=0, seed=3,
                         total_steps=8, rollout_batch_size=chunk, keep_teacher_logits=False)
    out = source.next(0, examples()[:8], offset=0)
    assert out.action is Action.POLICY_ROLLOUT and out.batch.teacher_logits is None
    reused = source.next(1, examples()[8:16], offset=0)  # the next PPO epoch trains on the stored rollout
    assert reused.action is Action.POLICY_REUSE and reused.batch is out.batch and reused.stats == {}
    batch = out.batch
    assert batch.num_loss_tokens == out.stats["rollout_tokens"]
    # stored log-probabilities = the models' log-probability of each response token (full forwards, float64)
    targets = batch.labels[:, 1:].clamp(min=0)[..., None]
    with torch.no_grad():
        log_q, log_p = (
            torch.log_softmax(m(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids).logits.double()[:, :-1], -1).gather(-1, targets)
            .squeeze(-1)[batch.loss_mask]
            for m in (model, frozen)
        )
    packed = batch.packed_policy()
    torch.testing.assert_close(packed.old_logprobs.double(), log_q, rtol=0, atol=1e-4)
    torch.testing.assert_close(packed.teacher_logprobs.double(), log_p, rtol=0, atol=1e-4)
    torch.testing.assert_close(packed.rewards.double(), (log_p - log_q) / 0.5, rtol=0, atol=1e-3)
    advantages = packed.advantages.double()
    assert abs(float(advantages.mean())) < 1e-5 and float(advantages.var(correction=0)) == pytest.approx(1, abs=1e-5)
    assert out.stats["reward_sum"] == pytest.approx(float(packed.rewards.sum()), rel=1e-5)


def test_ppo_epochs_schedule() -> None:
    minillm = method("minillm", ppo_epochs=3)
    actions = [choose_action(minillm, r=0.0, step=k, total_steps=9, phi=0.0, buffered=0) for k in range(1, 8)]
    assert actions == [Action.POLICY_ROLLOUT, Action.POLICY_REUSE, Action.POLICY_REUSE] * 2 + [Action.POLICY_ROLLOUT]


# ---------------------------------------------------------------------------------------------- configuration


def test_minillm_defaults_and_validation() -> None:
    cfg = load_config(None)
    minillm = cfg.methods["minillm"]
    assert (minillm.data, minillm.rollout_strategy, minillm.loss) == ("policy_gradient", "mixture", "rkl")
    assert (minillm.ppo_epochs, minillm.ppo_clip, minillm.gamma, minillm.reward_scaling) == (4, 0.2, 0.95, 0.5)
    assert (minillm.reward_clip, minillm.single_step_reg, minillm.lm_coef) == (100.0, True, 0.0)
    assert cfg.rollout.mixture_alpha == 0.2 and "minillm" not in cfg.runs
    with pytest.raises(ConfigError, match="needs loss: rkl"):
        load_config(None, overrides={"methods.minillm.loss": "fkl"})
    with pytest.raises(ConfigError, match="lm_data"):
        load_config(None, overrides={"methods.minillm.lm_coef": 1.0})
    with pytest.raises(ConfigError, match="needs data: policy_gradient"):
        load_config(None, overrides={"methods.kd.lm_coef": 1.0, "methods.kd.lm_data": "x.txt"})
    with pytest.raises(ConfigError, match="ppo_clip"):
        load_config(None, overrides={"methods.minillm.ppo_clip": 1.5})


# ---------------------------------------------------------------------------------------------- training


def _sequence_reverse_kl(model: torch.nn.Module, frozen: torch.nn.Module, prompts: list[list[int]]) -> float:
    """Mean over student samples of Σ_t KL(q_t ‖ p_t), the sequence-level reverse KL (float64, full forwards)."""
    ids, mask = left_pad(prompts * 16, 0)
    settings = RolloutSettings(pad_token_id=0, strategy="student", max_new_tokens=12, compute_divergence=False,
                               stop_token_ids=(tokenizer().eos_token_id,))
    rb = rollout(model, frozen, ids, mask, settings, generator=torch.Generator().manual_seed(123))
    full, full_mask = rb.full_sequences()
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        log_q, log_p = (
            torch.log_softmax(m(input_ids=full, attention_mask=full_mask, position_ids=positions).logits.double(), -1)
            for m in (model, frozen)
        )
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1)[:, ids.shape[1] - 1 : -1]
    return float((per_token * rb.response_mask).sum() / ids.shape[0])


def test_training_lowers_the_reverse_kl_on_held_out_prompts(tmp_path: Path) -> None:
    job = make_job(tmp_path, method("minillm"), lr=1e-2, epochs=4)  # 20 steps, a rollout every 4
    held_out = [e.prompt_ids for e in examples()[40:48]]
    before = _sequence_reverse_kl(job.student, job.teacher, held_out)
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(job, tracker=tracker)
    after = _sequence_reverse_kl(job.student, job.teacher, held_out)
    assert after < 0.95 * before, f"reverse KL {before:.4f} -> {after:.4f}"

    steps = [e["metrics"] for e in read_jsonl_events(tracker.path, "metrics") if "train/loss" in e["metrics"]]
    assert len(steps) == result.steps == 20
    rollouts = [m for m in steps if "source/policy_rollout" in m]
    assert len(rollouts) == 5 and sum("source/policy_reuse" in m for m in steps) == 15
    for m in rollouts:
        assert 0 < m["rollout/teacher_share"] < 0.5 and 0.5 < m["rollout/importance_weight_mean"] < 1.5
        assert {"rollout/reward_mean", "rollout/return_mean", "rollout/return_std"} <= m.keys()
    for m in steps:
        assert m["train/loss"] == pytest.approx(m["train/pg_loss"] + m["train/reg_loss"])
        assert 0.0 <= m["train/clip_fraction"] <= 1.0
    assert any(m["train/clip_fraction"] > 0 for m in steps if "source/policy_reuse" in m)


class _Interrupt(Exception):
    pass


class _StopAt(NullTracker):
    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.step and "train/loss" in metrics:
            raise _Interrupt


def test_resume_in_the_middle_of_ppo_epochs_reaches_the_same_weights(tmp_path: Path) -> None:
    # 10 steps, rollouts at steps 1, 5, 9; states at 2, 4, 6, 8, 10. Interrupted during step 7: the resumed run
    # continues from step 6 and must train steps 7-8 on the stored rollout of step 5.
    settings = {"epochs": 2, "save_every": 2}
    with pytest.raises(_Interrupt):
        train(make_job(tmp_path / "killed", method("minillm"), **settings), tracker=_StopAt(7))
    state_dir = tmp_path / "killed" / "state" / "run"
    assert latest_state(state_dir).name == "step-00000006"
    saved = torch.load(latest_state(state_dir) / "rank-0.pt", weights_only=True)["source"]["stored"]
    assert saved is not None and saved["policy"]["advantages"].shape == saved["input_ids"][:, -12:].shape
    resumed = train(make_job(tmp_path / "killed", method("minillm"), resume=True, **settings))
    reference = train(make_job(tmp_path / "uninterrupted", method("minillm"), **settings))
    assert resumed.steps == reference.steps == 10
    got = torch.load(latest_state(state_dir) / "model.pt", weights_only=True)
    want = torch.load(latest_state(tmp_path / "uninterrupted" / "state" / "run") / "model.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------------------------------------- pre-training term


def test_lm_corpus_reading_and_batches(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the first document\n\nthe second one\nthird\n")
    corpus = load_lm_corpus(text, tokenizer(), max_length=4)
    assert [e.id for e in corpus] == ["corpus.txt:1", "corpus.txt:3", "corpus.txt:4"]  # blank line skipped
    eos = tokenizer().eos_token_id
    assert all(e.input_ids == e.labels and e.input_ids[-1] == eos and len(e.input_ids) <= 4 for e in corpus)
    assert corpus[0].input_ids[:-1] == tokenizer().encode("the first document", add_special_tokens=False)[:3]
    # one epoch of 3 positions per 3 steps of 1 sequence: every document once, whatever the split over processes
    drawn = [lm_batch(corpus, seed=1, step=k, offset=0, count=1, global_count=1, pad_token_id=0) for k in range(3)]
    assert sorted(row for b in drawn for row in _unpadded(b)) == sorted(e.input_ids for e in corpus)
    halves = [lm_batch(corpus, seed=1, step=0, offset=o, count=1, global_count=2, pad_token_id=0) for o in (0, 1)]
    whole = lm_batch(corpus, seed=1, step=0, offset=0, count=2, global_count=2, pad_token_id=0)
    assert _unpadded(halves[0]) + _unpadded(halves[1]) == _unpadded(whole)  # two processes draw what one draws

    rows = tmp_path / "corpus.jsonl"
    rows.write_text(json.dumps({"text": "a text"}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(LMCorpusError, match="row 2"):
        load_lm_corpus(rows, tokenizer(), max_length=8)
    with pytest.raises(LMCorpusError, match="does not exist"):
        load_lm_corpus(tmp_path / "missing.jsonl", tokenizer(), max_length=8)


def _unpadded(batch) -> list[list[int]]:
    return [row[: int(n)].tolist() for row, n in zip(batch.input_ids, batch.attention_mask.sum(-1))]


def test_lm_term_is_half_ce_half_forward_kl_on_the_corpus_batch(tmp_path: Path) -> None:
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"text": e}) + "\n" for e in ["alpha beta gamma", "one two three four",
                                                                             "x y", "more text here", "last one"]))
    corpus = load_lm_corpus(corpus_file, tokenizer(), max_length=16)
    job = make_job(tmp_path, method("minillm", lm_coef=2.0, lm_data=str(corpus_file)), max_steps=1)
    job.lm_corpus = corpus
    first = lm_batch(corpus, seed=job.optim.seed, step=0, offset=0, count=8, global_count=8, pad_token_id=0)
    with torch.no_grad():  # the step's pre-training loss with the initial student, naive float64
        s_logits, t_logits = (
            m(input_ids=first.input_ids, attention_mask=first.attention_mask).logits.double()[:, :-1]
            for m in (job.student, job.teacher)
        )
    mask = first.loss_mask
    targets = first.labels[:, 1:][mask]
    log_q, p = torch.log_softmax(s_logits[mask], -1), torch.softmax(t_logits[mask], -1)
    ce = -log_q[torch.arange(len(targets)), targets]
    fkl = (p * (p.log() - log_q)).sum(-1)
    expected = float(((1 - PT_KD_RATIO) * ce + PT_KD_RATIO * fkl).mean())
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    train(job, tracker=tracker)
    step = next(e["metrics"] for e in read_jsonl_events(tracker.path, "metrics") if "train/loss" in e["metrics"])
    assert step["train/lm_loss"] == pytest.approx(expected, rel=1e-4)
    assert step["train/loss"] == pytest.approx(step["train/pg_loss"] + step["train/reg_loss"] + 2.0 * expected)


# ---------------------------------------------------------------------------------------------- CLI


def test_distill_method_minillm_through_the_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "preset": "tiny", "student": {"warmup": False}, "teacher": {"sft": False},
        "runs": {"minillm": {"method": "minillm"}},
    }))

    def cli(*argv: str) -> int:
        command, *rest = argv
        return main([command, "--params", str(params), *rest])

    for command in (["prepare-data"], ["setup-teacher"], ["build-student"]):
        assert cli(*command) == 0
    run = tmp_path / "runs" / "tiny"
    fast = ["--set", "optim.max_steps=5", "--set", "rollout.max_new_tokens=8", "--set", "eval.max_new_tokens=8"]
    assert cli("distill", "--method", "minillm", *fast) == 0
    summary = json.loads((run / "models" / "minillm" / "train_summary.json").read_text())
    assert summary["steps"] == 5
    metrics = read_jsonl_events(run / "tracking" / "minillm" / "metrics.jsonl", "metrics")
    logged = {k for e in metrics for k in e["metrics"]}
    assert {"train/pg_loss", "train/reg_loss", "train/clip_fraction", "rollout/reward_mean",
            "rollout/importance_weight_mean"} <= logged
    assert cli("evaluate", "--model", str(run / "models" / "minillm"), "--seeds", "10", "--limit", "2",
               "--throughput-prompts", "0", "--set", "eval.max_new_tokens=8") == 0
    assert cli("report") == 0
    assert "minillm" in (run / "report" / "report.md").read_text()


def _train_two_ways(root: str) -> None:
    """Runs in every process (and directly for the one-process reference): MiniLLM, 5 steps, rollouts at 1 and 5."""
    import sys

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    tests_dir = str(Path(__file__).resolve().parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # forked children inherit the parent's singleton
    accelerator = Accelerator(cpu=True)
    job = make_job(Path(root), method("minillm"), rollout={"batch_size": 2}, batch_size=8, micro_batch_size=2,
                   max_steps=5)
    train(job, accelerator=accelerator)
    if accelerator.is_main_process:
        torch.save(job.student.state_dict(), Path(root) / "minillm.pt")


@pytest.mark.slow  # two processes (gloo), about 15 s on 2 busy cores
def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    """Advantages are whitened with the statistics of the global batch, so the run does not depend on the process
    count (a per-process whitening would differ)."""
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState

    debug_launcher(_train_two_ways, args=(str(tmp_path / "two"),), num_processes=2)
    _train_two_ways(str(tmp_path / "one"))
    AcceleratorState._reset_state(reset_partial_state=True)
    two = torch.load(tmp_path / "two" / "minillm.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "minillm.pt", weights_only=True)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
