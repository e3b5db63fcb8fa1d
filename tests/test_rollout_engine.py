"""The rollout engines against a slow no-cache, no-padding reference decoder and against hand-set stub models.

Tests that do not name an engine run the default (speculative) one; tests/test_rollout_speculative.py checks that
both engines give the same rollouts.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig, PreTrainedModel

from switch_core.data.tokenize import left_pad
from switch_core.models.compat import IncompatibleModelsError
from switch_core.rollout import (
    RolloutBatch,
    RolloutInputError,
    RolloutSettings,
    RolloutSettingsError,
    RolloutTimer,
    rollout,
)
from switch_core.rollout.sampling import sample_inverse_cdf

VOCAB = 97
PROMPTS = [[5, 17, 33, 8, 64, 21], [40, 9, 77], [12], [88, 3, 50, 61, 14]]

# ---------------------------------------------------------------------------------------- tiny real models


def tiny(arch: str, hidden: int, seed: int, vocab: int = VOCAB) -> PreTrainedModel:
    """A tiny random causal LM with a wide initialisation, so next-token distributions are peaked and varied."""
    common = {"vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3, **common)
    elif arch == "opt":
        config = OPTConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, ffn_dim=2 * hidden,
                           max_position_embeddings=64, word_embed_proj_dim=hidden, init_std=0.3, **common)
    else:
        config = LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=2 * hidden, max_position_embeddings=64, initializer_range=0.3, **common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _softmax64(logits: torch.Tensor) -> np.ndarray:
    z = logits.double().numpy()
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _jsd64(q_logits: torch.Tensor, p_logits: torch.Tensor) -> float:
    q, p = _softmax64(q_logits), _softmax64(p_logits)
    m = 0.5 * (p + q)
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


def reference_decode(
    student: nn.Module,
    teacher: nn.Module,
    prompts: list[list[int]],
    *,
    tau: Callable[[int], float],
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (),
    source: str = "switch",
    skd_top_k: int = 25,
    adaswitch_window: int = 10,
    adaswitch_k: float = 2.0,
) -> list[list[dict]]:
    """Greedy decoding one prompt at a time, recomputing full forward passes without cache and without padding.

    ``skd``: the student's argmax is kept when fewer than ``skd_top_k`` teacher logits exceed its own, else the
    teacher's argmax is taken. ``adaswitch``: the teacher writes from the first position t >= 1 whose JSD exceeds
    ``adaswitch_k`` times the mean JSD of the (up to) ``adaswitch_window`` positions before it. Each step records
    ``margin``, the distance of its decision statistic from the decision boundary."""
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            seq, steps, switched = list(prompt), [], False
            for t in range(max_new_tokens):
                x = torch.tensor([seq])
                q = student(input_ids=x).logits[0, -1]
                p = teacher(input_ids=x).logits[0, -1]
                jsd = _jsd64(q, p)
                margin = abs(jsd - tau(t))
                if source == "skd":
                    above = int((p > p[int(q.argmax())]).sum())
                    use_teacher, margin = above >= skd_top_k, math.inf
                elif source == "adaswitch":
                    window = [s["jsd"] for s in steps[-adaswitch_window:]]
                    if not switched and window:
                        bound = adaswitch_k * sum(window) / len(window)
                        switched, margin = jsd > bound, abs(jsd - bound)
                    use_teacher = switched
                else:
                    use_teacher = {"switch": jsd > tau(t), "teacher": True, "student": False}[source]
                token = int((p if use_teacher else q).argmax())
                steps.append({"token": token, "teacher": use_teacher, "jsd": jsd, "tau": tau(t), "p": p, "q": q,
                              "margin": margin})
                seq.append(token)
                if token in stop_ids:
                    break
            rows.append(steps)
    return rows


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_greedy_switch_matches_the_no_cache_reference(arch: str, engine: str) -> None:
    student, teacher = tiny(arch, 32, seed=1), tiny(arch, 48, seed=2)
    tau0, decay, max_new = 0.6, 0.05, 12

    def tau(t: int) -> float:
        return tau0 * math.exp(-decay * t)

    free = reference_decode(student, teacher, PROMPTS, tau=tau, max_new_tokens=max_new)
    stop = free[1][3]["token"]  # row 1 stops at step 3 at the latest; others may stop too
    ref = reference_decode(student, teacher, PROMPTS, tau=tau, max_new_tokens=max_new, stop_ids=(stop,))
    margins = [abs(s["jsd"] - s["tau"]) for row in ref for s in row]
    assert min(margins) > 1e-4, "test set-up: a decision is too close to the threshold to compare"
    sources = [s["teacher"] for row in ref for s in row]
    assert any(sources) and not all(sources), "test set-up: both sources should occur"
    assert any(len(row) < max_new for row in ref) and any(len(row) == max_new for row in ref)

    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(
        pad_token_id=0, tau0=tau0, decay=decay, max_new_tokens=max_new, greedy=True, stop_token_ids=(stop,),
        keep_teacher_logits=True, teacher_logits_dtype="float32", engine=engine,
    )
    batch = rollout(student, teacher, ids, mask, settings)
    assert batch.tokens.shape == (4, max_new)
    for b, (row, expected) in enumerate(zip(batch.to_rows(), ref, strict=True)):
        n = len(expected)
        assert row["prompt_token_ids"] == PROMPTS[b]
        assert row["token_ids"] == [s["token"] for s in expected]
        assert row["sources"] == ["teacher" if s["teacher"] else "student" for s in expected]
        np.testing.assert_allclose(row["divergence"], [s["jsd"] for s in expected], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["threshold"], [s["tau"] for s in expected], rtol=1e-6)
        assert batch.response_mask[b].tolist() == [True] * n + [False] * (max_new - n)
        assert batch.tokens[b, n:].tolist() == [0] * (max_new - n)
        assert not batch.teacher_chosen[b, n:].any()
        for t, s in enumerate(expected):
            torch.testing.assert_close(batch.teacher_logits[b, t], s["p"], rtol=1e-4, atol=1e-4)
            tok = s["token"]
            assert batch.teacher_logprobs[b, t].item() == pytest.approx(
                float(torch.log_softmax(s["p"].double(), -1)[tok]), abs=1e-4)
            assert batch.student_logprobs[b, t].item() == pytest.approx(
                float(torch.log_softmax(s["q"].double(), -1)[tok]), abs=1e-4)
        assert torch.equal(batch.sampling_logprobs[b], torch.zeros(max_new))  # greedy: a point mass
        assert torch.equal(batch.teacher_logits[b, n:], torch.zeros(max_new - n, VOCAB))


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
@pytest.mark.parametrize("strategy", ["teacher", "student"])
def test_pure_strategies_match_the_reference(strategy: str, engine: str) -> None:
    student, teacher = tiny("llama", 32, seed=3), tiny("llama", 48, seed=4)
    ref = reference_decode(student, teacher, PROMPTS, tau=lambda t: 0.0, max_new_tokens=6, source=strategy)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, strategy=strategy, max_new_tokens=6, greedy=True, engine=engine)
    batch = rollout(student, teacher, ids, mask, settings)
    assert batch.tokens.tolist() == [[s["token"] for s in row] for row in ref]
    assert batch.teacher_chosen.all().item() == (strategy == "teacher")
    assert batch.teacher_chosen.any().item() == (strategy == "teacher")
    np.testing.assert_allclose(batch.divergence.numpy(), [[s["jsd"] for s in row] for row in ref], rtol=1e-4)


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
@pytest.mark.parametrize(("strategy", "options"), [("skd", {"skd_top_k": 12}),
                                                   ("adaswitch", {"adaswitch_window": 3, "adaswitch_k": 1.1})])
def test_greedy_peer_strategies_match_the_no_cache_reference(arch: str, strategy: str, options: dict,
                                                             engine: str) -> None:
    student, teacher = tiny(arch, 32, seed=1), tiny(arch, 48, seed=2)
    max_new = 12
    ref = reference_decode(student, teacher, PROMPTS, tau=lambda t: 0.0, max_new_tokens=max_new, source=strategy,
                           **options)
    assert min(s["margin"] for row in ref for s in row) > 1e-4, "test set-up: a decision is too close to call"
    sources = [s["teacher"] for row in ref for s in row]
    assert any(sources) and not all(sources), "test set-up: both sources should occur"
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, strategy=strategy, max_new_tokens=max_new, greedy=True,
                               keep_teacher_logits=True, teacher_logits_dtype="float32", engine=engine, **options)
    batch = rollout(student, teacher, ids, mask, settings)
    for row, expected in zip(batch.to_rows(), ref, strict=True):
        assert row["token_ids"] == [s["token"] for s in expected]
        assert row["sources"] == ["teacher" if s["teacher"] else "student" for s in expected]
        np.testing.assert_allclose(row["divergence"], [s["jsd"] for s in expected], rtol=1e-4, atol=1e-5)
    for b, expected in enumerate(ref):
        for t, s in enumerate(expected):
            torch.testing.assert_close(batch.teacher_logits[b, t], s["p"], rtol=1e-4, atol=1e-4)
    if strategy == "adaswitch":  # one switch per row: once the teacher writes, it writes the rest
        chosen = batch.teacher_chosen.int()
        assert torch.equal(chosen, chosen.cummax(dim=1).values)


def test_teacher_logits_are_the_teachers_predictions_on_the_mixed_sequence() -> None:
    student, teacher = tiny("gpt2", 32, seed=5), tiny("gpt2", 48, seed=6)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=0.55, decay=0.05, max_new_tokens=8, stop_token_ids=(2,),
                               keep_teacher_logits=True, teacher_logits_dtype="float32")
    batch = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(0))
    full_ids, full_mask = batch.full_sequences()
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = teacher(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits
    lp = ids.shape[1]
    predicted = logits[:, lp - 1 : lp - 1 + batch.tokens.shape[1]]
    valid = batch.response_mask
    torch.testing.assert_close(batch.teacher_logits[valid], predicted[valid], rtol=1e-4, atol=1e-4)


def test_results_can_feed_a_training_loss() -> None:
    """Tokens and teacher logits are ordinary tensors (not inference-mode ones): a backward pass through them works."""
    student, teacher = tiny("gpt2", 32, seed=7), tiny("gpt2", 48, seed=8)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=0.2, max_new_tokens=4, keep_teacher_logits=True)
    batch = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(1))
    full_ids, full_mask = batch.full_sequences()
    lp = ids.shape[1]
    logits = student(input_ids=full_ids, attention_mask=full_mask).logits[:, lp - 1 : -1]
    loss = (torch.log_softmax(logits, -1) * torch.softmax(batch.teacher_logits.float(), -1)).sum(-1)
    loss[batch.response_mask].mean().backward()
    assert student.transformer.wte.weight.grad is not None


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
def test_gradient_checkpointing_keeps_the_cache_and_training_flags_are_restored(engine: str) -> None:
    reference_student, teacher = tiny("gpt2", 32, seed=9), tiny("gpt2", 48, seed=10)
    student = tiny("gpt2", 32, seed=9)
    student.activation_checkpointing_enable()
    student.train()
    caches: list = []
    student.register_forward_hook(lambda module, args, kwargs, out: caches.append(out.cache), with_kwargs=True)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=0.6, decay=0.05, max_new_tokens=7, greedy=True, engine=engine)
    batch = rollout(student, teacher, ids, mask, settings)
    assert student.training and not teacher.training
    assert caches and all(cache is not None for cache in caches)
    if engine == "lockstep":  # the prompt, then one token per step
        assert len(caches) == 7 and caches[-1].get_seq_length() == ids.shape[1] + 6
    expected = rollout(reference_student, teacher, ids, mask, settings)
    assert torch.equal(batch.tokens, expected.tokens)
    assert torch.equal(batch.teacher_chosen, expected.teacher_chosen)


BF16_TIE_GAP = 2**-5
"""A greedy decision under bfloat16 autocast counts as a near-tie when its source's two largest logits are closer than
this fraction of the largest (8 bfloat16 steps): the cached engine and the no-cache reference round the logits
differently by up to 2 steps."""
BF16_TIE_JSD = 5e-3
"""...or when its JSD is within this of τ_t (the two round the JSD differently by up to 2.3e-3 on this set-up)."""


def _bf16_near_tie(step: dict) -> bool:
    top = (step["p"] if step["teacher"] else step["q"]).float().topk(2).values
    return float(top[0] - top[1]) <= BF16_TIE_GAP * float(top[0].abs()) or abs(step["jsd"] - step["tau"]) < BF16_TIE_JSD


@pytest.mark.parametrize("engine", ["lockstep", "speculative"])
@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_greedy_switch_under_bf16_autocast_matches_the_reference_under_it(arch: str, engine: str) -> None:
    """A run with ``optim.mixed_precision: bf16`` decodes its rollouts under ``torch.autocast(bfloat16)``: there the
    engine gives what the no-cache reference gives under the same autocast. A row may part from the reference only at
    a near-tie (:func:`_bf16_near_tie`, where bfloat16 rounding decides); measured: no row parts on this set-up."""
    student, teacher = tiny(arch, 32, seed=1), tiny(arch, 48, seed=2)
    prompts = [PROMPTS[i % len(PROMPTS)] + [10 + 5 * i] for i in range(16)]
    tau0, decay, max_new = 0.6, 0.05, 12
    ids, mask = left_pad(prompts, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=tau0, decay=decay, max_new_tokens=max_new, greedy=True,
                               keep_teacher_logits=True, teacher_logits_dtype="float32", engine=engine)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference_decode(student, teacher, prompts, tau=lambda t: tau0 * math.exp(-decay * t),
                               max_new_tokens=max_new)
        batch = rollout(student, teacher, ids, mask, settings)
    float32 = rollout(student, teacher, ids, mask, settings)
    # the autocast reached the models: the teacher logits are bfloat16 values (float32 ones are not)
    assert torch.equal(batch.teacher_logits, batch.teacher_logits.bfloat16().float())
    assert not torch.equal(float32.teacher_logits, float32.teacher_logits.bfloat16().float())
    sources = [s["teacher"] for row in ref for s in row]
    assert 0.2 < sum(sources) / len(sources) < 0.8, "test set-up: both sources should occur"
    parted = 0
    for b, (row, expected) in enumerate(zip(batch.to_rows(), ref, strict=True)):
        same = [tok == s["token"] and (src == "teacher") == s["teacher"]
                for tok, src, s in zip(row["token_ids"], row["sources"], expected, strict=True)]
        agree = same.index(False) if not all(same) else len(same)
        if agree < len(same):
            parted += 1
            assert _bf16_near_tie(expected[agree]), f"row {b} parts from the reference at {agree}, not at a near-tie"
        np.testing.assert_allclose(row["divergence"][:agree], [s["jsd"] for s in expected[:agree]], atol=BF16_TIE_JSD)
        for t in range(agree):  # rounding follows the scale of the whole logit vector, not of each entry
            p = expected[t]["p"].float()
            torch.testing.assert_close(batch.teacher_logits[b, t], p, rtol=0, atol=2**-5 * float(p.abs().max()))
    assert parted == 0


def test_sampling_is_reproducible_and_top_k_one_equals_greedy() -> None:
    student, teacher = tiny("opt", 32, seed=11), tiny("opt", 48, seed=12)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=0.6, decay=0.05, max_new_tokens=10, stop_token_ids=(2,))
    first = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(123))
    again = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(123))
    other = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(124))
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.teacher_chosen, again.teacher_chosen)
    torch.testing.assert_close(first.sampling_logprobs, again.sampling_logprobs)
    assert not torch.equal(first.tokens, other.tokens)
    assert (first.sampling_logprobs[first.response_mask] < 0).all()

    greedy = rollout(student, teacher, ids, mask, RolloutSettings(
        pad_token_id=0, tau0=0.6, decay=0.05, max_new_tokens=10, stop_token_ids=(2,), greedy=True))
    for top in ({"top_k": 1}, {"top_p": 1e-6}):
        narrow = rollout(student, teacher, ids, mask, RolloutSettings(
            pad_token_id=0, tau0=0.6, decay=0.05, max_new_tokens=10, stop_token_ids=(2,), **top),
            generator=torch.Generator().manual_seed(5))
        assert torch.equal(narrow.tokens, greedy.tokens)
        assert torch.equal(narrow.teacher_chosen, greedy.teacher_chosen)


# ---------------------------------------------------------------------------------------- stub models


class StubCache:
    """Tracks which original rows a stub's cache holds (the engine drops finished rows with batch_select_indices)."""

    def __init__(self, rows: int) -> None:
        self.rows = list(range(rows))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.rows = [self.rows[i] for i in indices.tolist()]


class StubLM(nn.Module):
    """Quacks like a Hugging Face causal LM; logits are a hand-set function of the position of the last fed token."""

    def __init__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], vocab: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)
        self.logits_fn = logits_fn
        self.fed: list[tuple[int, int]] = []

    def get_output_embeddings(self) -> None:
        return None

    def forward(self, *, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        assert use_cache is True and 1 <= logits_to_keep <= input_ids.shape[1]
        assert attention_mask.shape[0] == input_ids.shape[0] == position_ids.shape[0]
        cache = cache if cache is not None else StubCache(input_ids.shape[0])
        assert len(cache.rows) == input_ids.shape[0]
        self.fed.append(tuple(input_ids.shape))
        positions = position_ids[:, -logits_to_keep:]
        logits = self.logits_fn(positions.reshape(-1)).reshape(*positions.shape, -1)
        return SimpleNamespace(logits=logits, cache=cache)


def constant(logits: list[float]) -> StubLM:
    row = torch.tensor(logits)
    return StubLM(lambda pos: row.expand(pos.shape[0], -1).clone(), len(logits))


STUDENT_LOGITS = [0.0, 0.5, 0.0, 0.0, 0.0]  # greedy student emits 1
TEACHER_LOGITS = [0.0, 0.0, 0.0, 3.0, 0.0]  # greedy teacher emits 3


def _stub_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad([[4, 4], [4]], pad_token_id=0)


@pytest.mark.parametrize(
    ("schedule", "tau0_over_d", "first_teacher"),
    [
        # exponential: tau0*exp(-0.1 t) < d  <=>  t > ln(tau0/d)/0.1 = 10 ln 2 = 6.93  ->  t >= 7
        ("exponential", 2.0, math.ceil(math.log(2.0) / 0.1)),
        # linear, horizon 10: 2.2d (1 - t/10) < d  <=>  t > 10 (1 - 1/2.2) = 5.45  ->  t >= 6
        ("linear", 2.2, math.floor(10 * (1 - 1 / 2.2)) + 1),
        ("constant", 0.99, 0),  # always the teacher
        ("constant", 1.01, None),  # never the teacher
        ("exponential", 0.0, 0),  # tau0 = 0: the teacher whenever JSD > 0
    ],
)
def test_stub_switch_position_follows_the_schedule(
    schedule: str, tau0_over_d: float, first_teacher: int | None
) -> None:
    d = _jsd64(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS))
    assert 0.1 < d < 0.5
    student, teacher = constant(STUDENT_LOGITS), constant(TEACHER_LOGITS)
    ids, mask = _stub_prompts()
    settings = RolloutSettings(pad_token_id=0, schedule=schedule, tau0=tau0_over_d * d, decay=0.1, horizon=10,
                               max_new_tokens=12, greedy=True)
    batch = rollout(student, teacher, ids, mask, settings)
    switch_at = 12 if first_teacher is None else first_teacher
    expected_sources = [False] * switch_at + [True] * (12 - switch_at)
    for b in range(2):
        assert batch.teacher_chosen[b].tolist() == expected_sources
        assert batch.tokens[b].tolist() == [3 if s else 1 for s in expected_sources]
    torch.testing.assert_close(batch.divergence, torch.full((2, 12), d, dtype=torch.float32))
    assert batch.teacher_share() == pytest.approx((12 - switch_at) / 12)


def test_stub_stop_ids_padding_and_dropping_finished_rows() -> None:
    """Rows stop at different steps; later positions are padding; finished rows leave the compute batch."""
    vocab = 40

    def emit(pos: torch.Tensor) -> torch.Tensor:  # token pos+10, but the stop token 1 at position 8
        token = torch.where(pos == 8, 1, pos + 10)
        return torch.nn.functional.one_hot(token, vocab).float() * 5.0

    student, teacher = StubLM(emit, vocab), StubLM(emit, vocab)
    prompts = [[7] * 2, [7] * 4, [7] * 6, [7] * 9, [7] * 3]
    stop_ids = (1, 16)  # the row of length 9 stops on 1 at once, the others on 16 (position 6) at different steps
    ids, mask = left_pad(prompts, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, strategy="student", compute_divergence=False, max_new_tokens=10,
                               greedy=True, stop_token_ids=stop_ids)
    batch = rollout(student, teacher, ids, mask, settings)
    expected = []
    for prompt in prompts:
        row = []
        for t in range(10):
            pos = len(prompt) - 1 + t
            row.append(1 if pos == 8 else pos + 10)
            if row[-1] in stop_ids:
                break
        expected.append(row)
    assert [r["token_ids"] for r in batch.to_rows()] == expected
    width = max(len(r) for r in expected)
    assert batch.tokens.shape == (5, width)
    for b, row in enumerate(expected):
        assert batch.tokens[b].tolist() == row + [0] * (width - len(row))
        assert batch.response_mask[b].tolist() == [True] * len(row) + [False] * (width - len(row))
    assert teacher.fed == []  # pure student sampling never runs the teacher
    sizes = [shape[0] for shape in student.fed]
    assert sizes[0] == 5 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert all(shape[1] == 1 for shape in student.fed[1:])
    assert torch.isnan(batch.divergence[batch.response_mask]).all()
    assert torch.isnan(batch.teacher_logprobs[batch.response_mask]).all()
    assert (batch.divergence[~batch.response_mask] == 0).all()


def test_stub_pad_equal_to_stop_id_keeps_the_stop_token_in_the_response() -> None:
    vocab = 6

    def emit(pos: torch.Tensor) -> torch.Tensor:  # token 3 until position 4, then eos = pad = 2
        return torch.nn.functional.one_hot(torch.where(pos >= 4, 2, 3), vocab).float() * 5.0

    ids, mask = left_pad([[4, 4, 4], [4]], pad_token_id=2)
    settings = RolloutSettings(pad_token_id=2, strategy="student", max_new_tokens=8, greedy=True, stop_token_ids=(2,))
    batch = rollout(StubLM(emit, vocab), StubLM(emit, vocab), ids, mask, settings)
    assert [r["token_ids"] for r in batch.to_rows()] == [[3, 3, 2], [3, 3, 3, 3, 2]]
    assert batch.response_mask.sum(1).tolist() == [3, 5]


def test_stub_teacher_strategy_without_divergence_skips_the_student() -> None:
    student, teacher = constant(STUDENT_LOGITS), constant(TEACHER_LOGITS)
    ids, mask = _stub_prompts()
    settings = RolloutSettings(pad_token_id=0, strategy="teacher", compute_divergence=False, max_new_tokens=3,
                               greedy=True)
    batch = rollout(student, teacher, ids, mask, settings)
    assert student.fed == [] and len(teacher.fed) == 3
    assert batch.tokens.tolist() == [[3, 3, 3], [3, 3, 3]] and batch.teacher_chosen.all()
    assert torch.isnan(batch.student_logprobs).all()


def _expected_probs(logits: list[float], temperature: float, top_k: int, top_p: float) -> np.ndarray:
    z = np.array(logits, dtype=np.float64) / temperature
    order = np.argsort(-z)
    keep = np.zeros(len(z), dtype=bool)
    keep[order[: top_k if top_k > 0 else len(z)]] = True
    z = np.where(keep, z, -np.inf)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        mass_before, nucleus = 0.0, np.zeros(len(z), dtype=bool)
        for i in np.argsort(-probs):
            if mass_before < top_p:
                nucleus[i] = True
            mass_before += probs[i]
        probs = np.where(nucleus, probs, 0.0)
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (0.7, 4, 0.9)]
)
def test_stub_sampling_follows_temperature_top_k_and_top_p(temperature: float, top_k: int, top_p: float) -> None:
    logits = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
    rows = 3000
    ids, mask = torch.full((rows, 1), 4), torch.ones((rows, 1), dtype=torch.long)
    settings = RolloutSettings(pad_token_id=0, strategy="student", compute_divergence=False, max_new_tokens=1,
                               temperature=temperature, top_k=top_k, top_p=top_p)
    batch = rollout(constant(logits), constant(logits), ids, mask, settings, generator=torch.Generator().manual_seed(7))
    probs = _expected_probs(logits, temperature, top_k, top_p)
    counts = np.bincount(batch.tokens[:, 0].numpy(), minlength=len(logits))
    assert (counts[probs == 0] == 0).all()
    sigma = np.sqrt(probs * (1 - probs) / rows)
    assert (np.abs(counts / rows - probs) <= 5 * sigma + 1e-12).all()
    np.testing.assert_allclose(batch.sampling_logprobs[:, 0].numpy(), np.log(probs[batch.tokens[:, 0].numpy()]),
                               rtol=1e-5)
    raw = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
    np.testing.assert_allclose(batch.student_logprobs[:, 0].numpy(), raw[batch.tokens[:, 0]].numpy(), rtol=1e-5)


def test_stub_mixture_samples_the_mixture_and_reports_its_log_probability() -> None:
    alpha, rows = 0.3, 4000
    q_logits, p_logits = [1.5, 1.0, 0.0, -1.0], [-1.0, 0.0, 0.5, 2.0]
    ids, mask = torch.full((rows, 1), 0), torch.ones((rows, 1), dtype=torch.long)
    settings = RolloutSettings(pad_token_id=0, strategy="mixture", mixture_alpha=alpha, max_new_tokens=1)
    batch = rollout(constant(q_logits), constant(p_logits), ids, mask, settings,
                    generator=torch.Generator().manual_seed(11))
    p, q = _softmax64(torch.tensor(p_logits)), _softmax64(torch.tensor(q_logits))
    mix = alpha * p + (1 - alpha) * q
    tokens, from_teacher = batch.tokens[:, 0].numpy(), batch.teacher_chosen[:, 0].numpy()
    counts = np.bincount(tokens, minlength=4) / rows
    assert (np.abs(counts - mix) <= 5 * np.sqrt(mix * (1 - mix) / rows)).all()
    assert abs(from_teacher.mean() - alpha) <= 5 * math.sqrt(alpha * (1 - alpha) / rows)
    teacher_counts = np.bincount(tokens[from_teacher], minlength=4) / from_teacher.sum()
    assert (np.abs(teacher_counts - p) <= 5 * np.sqrt(p * (1 - p) / from_teacher.sum())).all()
    np.testing.assert_allclose(batch.sampling_logprobs[:, 0].numpy(), np.log(mix[tokens]), rtol=1e-5)
    np.testing.assert_allclose(batch.student_logprobs[:, 0].numpy(), np.log(q[tokens]), rtol=1e-5)
    np.testing.assert_allclose(batch.teacher_logprobs[:, 0].numpy(), np.log(p[tokens]), rtol=1e-5)

    greedy = rollout(constant(q_logits), constant(p_logits), ids[:2], mask[:2],
                     RolloutSettings(pad_token_id=0, strategy="mixture", mixture_alpha=alpha, max_new_tokens=1,
                                     greedy=True))
    best = int(np.argmax(mix))
    assert greedy.tokens[:, 0].tolist() == [best, best]
    assert greedy.teacher_chosen[:, 0].tolist() == [bool(alpha * p[best] > (1 - alpha) * q[best])] * 2


def test_stub_random_strategy_uses_the_teacher_at_the_given_rate() -> None:
    rate, rows, steps = 0.25, 500, 8
    ids, mask = torch.full((rows, 1), 4), torch.ones((rows, 1), dtype=torch.long)
    settings = RolloutSettings(pad_token_id=0, strategy="random", random_rate=rate, max_new_tokens=steps, greedy=True)
    batch = rollout(constant(STUDENT_LOGITS), constant(TEACHER_LOGITS), ids, mask, settings,
                    generator=torch.Generator().manual_seed(3))
    n = rows * steps
    assert abs(batch.teacher_share() - rate) <= 5 * math.sqrt(rate * (1 - rate) / n)
    assert torch.equal(batch.tokens, torch.where(batch.teacher_chosen, 3, 1))
    d = _jsd64(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS))
    torch.testing.assert_close(batch.divergence, torch.full((rows, steps), d, dtype=torch.float32))


def test_timer_collects_sections_without_changing_results() -> None:
    student, teacher = tiny("llama", 32, seed=13), tiny("llama", 48, seed=14)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    settings = RolloutSettings(pad_token_id=0, tau0=0.6, max_new_tokens=5, greedy=True)
    timer = RolloutTimer()
    timed = rollout(student, teacher, ids, mask, settings, timer=timer)
    plain = rollout(student, teacher, ids, mask, settings)
    assert torch.equal(timed.tokens, plain.tokens)
    assert set(timer.seconds) == {"student", "teacher", "select"}
    assert all(v > 0 for v in timer.seconds.values())


# ---------------------------------------------------------------------------------------- batch helpers, errors


def test_teacher_share_helpers_and_rows_with_a_tokenizer() -> None:
    batch = RolloutBatch(
        prompt_ids=torch.tensor([[0, 5], [6, 7]]),
        prompt_mask=torch.tensor([[0, 1], [1, 1]]),
        tokens=torch.tensor([[8, 9, 0], [10, 0, 0]]),
        response_mask=torch.tensor([[True, True, False], [True, False, False]]),
        teacher_chosen=torch.tensor([[False, True, False], [True, False, False]]),
        divergence=torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.0]]),
        threshold=torch.tensor([0.5, 0.4, 0.3]),
        sampling_logprobs=torch.zeros(2, 3),
        student_logprobs=torch.zeros(2, 3),
        teacher_logprobs=torch.zeros(2, 3),
    )
    assert batch.teacher_share() == pytest.approx(2 / 3)
    teacher, tokens = batch.teacher_counts()  # per position, over the rows still running (padding excluded)
    assert teacher.tolist() == [1, 1, 0] and tokens.tolist() == [2, 1, 0]

    class Tokenizer:
        def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
            assert skip_special_tokens is True
            return "-".join(map(str, ids))

    rows = batch.to_rows(Tokenizer())
    assert rows[0] == {"prompt_token_ids": [5], "token_ids": [8, 9], "sources": ["student", "teacher"],
                       "divergence": pytest.approx([0.1, 0.2]), "threshold": pytest.approx([0.5, 0.4]), "text": "8-9"}
    assert rows[1]["prompt_token_ids"] == [6, 7] and rows[1]["sources"] == ["teacher"] and rows[1]["text"] == "10"
    ids, mask = batch.full_sequences()
    assert ids.tolist() == [[0, 5, 8, 9, 0], [6, 7, 10, 0, 0]]
    assert mask.tolist() == [[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strategy", "beam"), ("schedule", "cosine"), ("tau0", -0.1), ("decay", -1.0), ("horizon", 0),
        ("random_rate", 1.5), ("mixture_alpha", -0.2), ("max_new_tokens", 0), ("temperature", 0.0), ("top_k", -1),
        ("top_p", 0.0), ("pad_token_id", -1), ("stop_token_ids", (2, -5)), ("teacher_logits_dtype", "int8"),
        ("engine", "beam"), ("max_draft_tokens", 0),
    ],
)
def test_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(RolloutSettingsError, match=field):
        RolloutSettings(**{"pad_token_id": 0, field: value})


def test_settings_accept_a_list_of_stop_ids() -> None:
    assert RolloutSettings(pad_token_id=0, stop_token_ids=[2, 3]).stop_token_ids == (2, 3)


def test_malformed_prompts_and_incompatible_models_are_clear_errors() -> None:
    student, teacher = constant(STUDENT_LOGITS), constant(TEACHER_LOGITS)
    settings = RolloutSettings(pad_token_id=0, max_new_tokens=2)
    with pytest.raises(RolloutInputError, match=r"rows \[0\] are not left-padded"):
        rollout(student, teacher, torch.tensor([[4, 0], [4, 4]]), torch.tensor([[1, 0], [1, 1]]), settings)
    with pytest.raises(RolloutInputError, match=r"rows \[1\] are empty"):
        rollout(student, teacher, torch.tensor([[4, 4], [0, 0]]), torch.tensor([[1, 1], [0, 0]]), settings)
    with pytest.raises(RolloutInputError, match="shape"):
        rollout(student, teacher, torch.tensor([[4, 4]]), torch.tensor([[1, 1, 1]]), settings)
    with pytest.raises(RolloutInputError, match="pad_token_id"):
        rollout(student, teacher, torch.tensor([[4]]), torch.tensor([[1]]), RolloutSettings(pad_token_id=5))
    with pytest.raises(RolloutInputError, match="prompt_ids hold id 9"):
        rollout(student, teacher, torch.tensor([[9]]), torch.tensor([[1]]), settings)
    with pytest.raises(IncompatibleModelsError, match="vocab_size"):
        rollout(constant([0.0] * 6), teacher, torch.tensor([[4]]), torch.tensor([[1]]), settings)


def test_inverse_cdf_sampler_never_draws_a_zero_probability_token() -> None:
    log_probs = torch.log(torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.2, 0.0, 0.3, 0.5, 0.0]]))

    def draw(u: float) -> list[int]:
        return sample_inverse_cdf(log_probs, torch.full((2,), u, dtype=torch.float64)).tolist()

    # u = 1 (the rounding case u * total == total) falls back to the last token of positive probability
    assert draw(1.0) == [2, 3]
    assert draw(0.0) == [1, 0]
    assert draw(0.4) == [1, 2]
    assert draw(0.5) == [2, 3]  # a uniform on a CDF step's edge draws the next token: cdf[v-1] <= u < cdf[v]
