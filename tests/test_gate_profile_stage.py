"""`switch-kd gate-profile` on the tiny preset: the profile equals a hand computation from an independent rollout of
the warmed-up student, its first JSD equals a float64 JSD of the two models' distributions, and a re-run writes the
same bytes."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from switch_core.cli import main
from switch_core.config import load_config
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.rollout import RolloutSettings, rollout

PARAMS = {  # the tiny preset's rollout section applies: τ0 0.3, 24 new tokens, batches of 4
    "preset": "tiny",
    "teacher": {"sft": False},
    "warmup_optim": {"max_steps": 1, "eval_examples": 2},
    "gate_profile": {"prompts": 5},
}


def _cli(root: Path, *argv: str) -> int:
    command, *rest = argv
    return main([command, "--params", str(root / "params.yaml"), *rest])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for command in (["prepare-data"], ["setup-teacher"], ["build-student"], ["sft", "--role", "student"]):
        assert _cli(root, *command) == 0
    return root


def _independent_rollouts(root: Path) -> tuple[list[str], list[list[float]], list[list[int]], object, object]:
    """The record ids, per-token JSD and prompt ids of the student's rollouts, decoded here from the stage's
    definition (5 of the dev records drawn with torch.randperm under seed 0, file order; the rollout section's
    settings with strategy student; batches of 4 seeded 0 and 1)."""
    config = load_config(root / "params.yaml")
    run = root / "runs" / "tiny"
    records = read_records(run / "data" / "dev.jsonl")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    chosen = [records[i] for i in sorted(order[:5])]
    tokenizer = load_tokenizer(run / "models" / "teacher-base")
    teacher = load_causal_lm(run / "models" / "teacher-base", dtype="float32")
    student = load_causal_lm(run / "models" / "student-sft", dtype="float32")
    prompts = [tokenize_prompt(format_prompt(r, style=config.data.prompt_format, tokenizer=tokenizer), tokenizer,
                               max_prompt_length=config.data.max_prompt_length) for r in chosen]
    settings = dataclasses.replace(
        RolloutSettings.from_config(config.rollout, pad_token_id=int(tokenizer.pad_token_id),
                                    stop_token_ids=(int(tokenizer.eos_token_id),)),
        strategy="student", compute_divergence=True)
    jsd = []
    assert (config.rollout.batch_size, config.rollout.max_new_tokens, config.rollout.tau0) == (4, 24, 0.3)
    for index, start in enumerate(range(0, 5, 4)):
        ids, mask = left_pad(prompts[start : start + 4], settings.pad_token_id)
        batch = rollout(student, teacher, ids, mask, settings, generator=torch.Generator().manual_seed(index))
        jsd += [row["divergence"] for row in batch.to_rows()]
    return [r.id for r in chosen], jsd, prompts, teacher, student


def _jsd64(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Symmetric JSD (β = 0.5) in float64: ½·KL(p‖m) + ½·KL(q‖m), m = ½(p + q)."""
    p, q = p_logits.double().softmax(-1), q_logits.double().softmax(-1)
    m = 0.5 * (p + q)
    return float(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())


def test_profile_equals_a_hand_computation_and_reruns_byte_identical(project: Path) -> None:
    ids, jsd, prompts, teacher, student = _independent_rollouts(project)
    # τ0 = twice the median JSD: τ_t = τ0·e^(−0.1 t) crosses the tiny models' JSD inside the 24 positions
    tau0 = float(f"{2 * np.median([v for row in jsd for v in row]):.3g}")
    low_tau = ("--set", f"rollout.tau0={tau0}")
    assert _cli(project, "gate-profile", *low_tau) == 0
    path = project / "runs" / "tiny" / "analysis" / "gate_profile.json"
    written = path.read_bytes()
    profile = json.loads(written)
    assert profile["records"] == ids and profile["student"] == "student-sft" and profile["teacher"] == "teacher-base"
    assert profile["jsd"] == jsd and profile["rollouts"] == 5
    assert profile["decoding"] == {"strategy": "student", "max_new_tokens": 24, "greedy": False, "temperature": 1.0,
                                   "top_k": 0, "top_p": 1.0}
    # the first token's JSD is the two models' JSD on the bare prompt
    with torch.no_grad():
        first = torch.tensor([prompts[0]])
        reference = _jsd64(teacher(first).logits[0, -1], student(first).logits[0, -1])
    assert jsd[0][0] == pytest.approx(reference, rel=1e-3) and reference > 0
    # statistics by hand (numpy, float64) from the per-token values
    every = np.array([v for row in jsd for v in row])
    assert profile["tokens"] == every.size == sum(len(row) for row in jsd)
    early = np.array([v for row in jsd for v in row[:10]])
    middle = np.array([v for row in jsd for v in row[10:20]])
    late = np.array([v for row in jsd for v in row[20:]])
    expected = [("overall", every), ("0–9", early), ("10–19", middle), ("20–23", late)]
    got = {"overall": profile["overall"]} | {b["label"]: b for b in profile["buckets"]}
    assert list(got) == ["overall", "0–9", "10–19", "20–23"]
    for label, values in expected:
        assert got[label]["count"] == values.size
        assert got[label]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        for name, q in (("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75), ("p90", 90)):
            assert got[label][name] == pytest.approx(np.percentile(values, q), rel=1e-12), (label, name)
    at_0 = np.array([row[0] for row in jsd])
    assert profile["positions"][0]["p50"] == pytest.approx(np.median(at_0), rel=1e-12)
    # τ_t = τ0·e^(−0.1 t) as the engine stores it (float32); share of tokens above it
    tau = [float(np.float32(tau0 * math.exp(-0.1 * t))) for t in range(24)]
    above = sum(v > tau[t] for row in jsd for t, v in enumerate(row))
    assert 0 < above < every.size
    assert profile["threshold"]["tau0"] == tau0 and profile["threshold"]["overall"] == above / every.size
    late_above = sum(v > tau[t] for row in jsd for t, v in enumerate(row) if t >= 20)
    assert profile["threshold"]["buckets"][2] == {"label": "20–23", "share": late_above / late.size, "count": late.size}
    # a re-run: the same bytes
    assert _cli(project, "gate-profile", *low_tau) == 0
    assert path.read_bytes() == written


def test_the_profile_follows_optim_mixed_precision(project: Path) -> None:
    """With ``optim.mixed_precision: bf16`` the stage decodes as a bf16 distillation run does, under bfloat16 autocast,
    and records it under ``decoding`` (a float32 profile has no such key: the file it was before the setting)."""
    assert _cli(project, "gate-profile", "--set", "optim.mixed_precision=bf16") == 0
    profile = json.loads((project / "runs" / "tiny" / "analysis" / "gate_profile.json").read_text())
    assert profile["decoding"]["mixed_precision"] == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        jsd = _independent_rollouts(project)[1]
    assert profile["jsd"] == jsd
    assert jsd != _independent_rollouts(project)[1]  # float32 decodes other values


def test_a_missing_warmed_up_student_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert _cli(tmp_path, "gate-profile") == 2
    err = capsys.readouterr().err
    assert "student-sft does not exist; run `switch-kd sft --role student` first" in err
