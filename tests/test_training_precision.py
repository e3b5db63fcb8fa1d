"""``optim.mixed_precision``: a run's rollouts, calibration and dev generations run under its accelerator's autocast,
as its losses do; the stand-alone commands enter the same autocast (`switch_core.processes.autocast`)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_training_support import dev_data, examples, make_job, method, student, teacher, tokenizer

from switch_core.cli import main
from switch_core.commands.seqkd_data import generate_seqkd_data, sampling_settings
from switch_core.config import Config, EvalConfig, RolloutConfig, load_config
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.evaluation.generate import generate_batch, generate_responses
from switch_core.evaluation.metrics import rouge_l
from switch_core.layout import RunLayout
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.processes import autocast, make_accelerator
from switch_core.rollout import RolloutSettings
from switch_core.training import BatchSource, train
from switch_core.training.dev import dev_rouge_l


@pytest.fixture(autouse=True, scope="module")
def _back_to_no_mixed_precision():
    """Leave accelerate's per-process state as the other tests expect it (no mixed precision)."""
    yield
    make_accelerator("no")


def _autocast_state() -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")


def test_the_commands_autocast_is_the_accelerators() -> None:
    """One process switches back and forth (``switch-kd pipeline`` runs stages with their own sections in one
    process); each accelerator's autocast is the one the stand-alone commands enter."""
    for precision in ("bf16", "no", "bf16"):
        accelerator = make_accelerator(precision)
        assert accelerator.mixed_precision == precision
        with accelerator.autocast():
            expected = _autocast_state()
        with autocast(precision, "cpu"):
            assert _autocast_state() == expected
        assert expected[0] == (precision == "bf16") and (precision == "no" or expected[1] == torch.bfloat16)


def _record_autocast(model: torch.nn.Module) -> list[bool]:
    """Whether autocast was on at each forward of ``model`` (every forward embeds its tokens)."""
    seen: list[bool] = []
    model.get_input_embeddings().register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    return seen


def test_every_forward_of_a_bf16_run_but_the_head_check_runs_under_autocast(tmp_path) -> None:
    """A SWITCH run with ``mixed_precision: bf16`` (τ0 calibrated, rollouts with their stop statistics, dev losses,
    dev ROUGE-L generations, the losses): only the output-head check before training (two forwards of each model)
    runs outside autocast."""
    job = make_job(tmp_path, method("switch"), rollout={"tau0": None, "target_teacher_share": 0.5}, max_steps=2,
                   mixed_precision="bf16")
    seen = {"student": _record_autocast(job.student), "teacher": _record_autocast(job.teacher)}
    result = train(job)
    assert result.tau0 is not None and result.tau0 > 0
    assert result.final_metrics["dev/rouge_l"] == result.final_metrics["dev/rouge_l"]  # generated: not NaN
    for name, flags in seen.items():
        assert flags.count(False) == 2, name
        assert flags.count(True) > 10, name


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_dev_rouge_l_generates_under_the_accelerators_autocast(precision: str) -> None:
    model, dev, generation = student(), dev_data(), EvalConfig(max_new_tokens=8, batch_size=4)
    dtypes: list[torch.dtype] = []
    model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    accelerator = make_accelerator(precision)
    score = dev_rouge_l(model, tokenizer(), dev, generation, accelerator=accelerator, max_prompt_length=32, seed=7)
    expected_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert dtypes and set(dtypes) == {expected_dtype}
    with autocast(precision, "cpu"):
        responses = generate_responses(
            model, tokenizer(), dev.prompts, max_prompt_length=32, max_new_tokens=8, temperature=1.0, top_k=0,
            top_p=1.0, no_repeat_ngram_size=6, batch_size=4, seed=7,
        )
    expected = [rouge_l(p, r) for p, r in zip(responses, dev.references, strict=True)]
    assert score == pytest.approx(100.0 * sum(expected) / len(expected), abs=1e-12)


def _source(autocast_factory=None) -> BatchSource:
    switch = method("switch")
    pad = tokenizer().pad_token_id
    settings = RolloutSettings.from_config(RolloutConfig(tau0=0.1, max_new_tokens=10), switch, pad_token_id=pad,
                                           stop_token_ids=[tokenizer().eos_token_id])
    extra = {"autocast": autocast_factory} if autocast_factory is not None else {}
    return BatchSource(switch, student=student(), teacher=teacher(), settings=settings, pad_token_id=pad, seed=5,
                       total_steps=10, rollout_batch_size=4, keep_teacher_logits=True, **extra)


def test_rollouts_of_a_batch_source_run_under_its_autocast() -> None:
    """The kept teacher logits of a bf16 source are bfloat16 values and those of an explicit autocast rollout; the
    default source (a float32 run) is unchanged."""
    bf16 = make_accelerator("bf16")
    out = _source(bf16.autocast).next(0, examples()[:6], offset=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit = _source().next(0, examples()[:6], offset=0)
    plain = _source().next(0, examples()[:6], offset=0)
    kept = out.batch.packed_teacher_logits()
    assert torch.equal(kept, kept.bfloat16().float())
    assert torch.equal(out.batch.input_ids, explicit.batch.input_ids)
    assert torch.equal(kept, explicit.batch.packed_teacher_logits()) and out.stats == pytest.approx(
        {**explicit.stats, "rollout_seconds": out.stats["rollout_seconds"]})
    plain_kept = plain.batch.packed_teacher_logits()
    assert not torch.equal(plain_kept, plain_kept.bfloat16().float())


def test_seqkd_sampling_settings_record_the_precision_only_when_on() -> None:
    """The SeqKD data follow ``optim.mixed_precision``; a float32 fingerprint is the one it had before the setting."""
    float32 = sampling_settings(Config())
    assert "mixed_precision" not in float32
    bf16 = sampling_settings(Config.model_validate({"optim": {"mixed_precision": "bf16"}}))
    assert bf16 == {**float32, "mixed_precision": "bf16"}


def test_seqkd_data_are_generated_under_optim_mixed_precision(tmp_path) -> None:
    """The teacher's SeqKD responses of a bf16 configuration are those of its generation under bfloat16 autocast."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": "tiny", "teacher": {"sft": False}, "data": {"seqkd_limit": 6}}))
    for command in ("prepare-data", "setup-teacher"):
        assert main([command, "--params", str(params)]) == 0
    config = load_config(params, overrides=["optim.mixed_precision=bf16"])
    layout = RunLayout.from_config(config, tmp_path)
    out = generate_seqkd_data(config, layout)
    settings = json.loads(layout.seqkd_meta.read_text())["inputs"]["sampling"]
    assert settings == sampling_settings(config) and settings["mixed_precision"] == "bf16"
    folder = layout.model("teacher-base")
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    prompts = [format_prompt(r, style=settings["prompt_format"]) for r in read_records(layout.split("train"))[:6]]
    kwargs = {k: settings[k] for k in ("max_prompt_length", "max_new_tokens", "temperature", "top_k", "top_p",
                                       "no_repeat_ngram_size", "seed")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = generate_batch(model, tok, prompts, batch_size=config.eval.batch_size, **kwargs).texts
    float32 = generate_batch(model, tok, prompts, batch_size=config.eval.batch_size, **kwargs).texts
    assert [r.references[0] for r in read_records(out)] == [t for t in expected if t.strip()]
    assert expected != float32  # the precision shows in the samples
