"""Presets: every one validates; each paper preset's settings train one step on a tiny model of its architecture;
the LoRA preset trains adapters only, saves merged weights that reload with the same logits, and resumes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_training_support import dev_data, examples, tokenizer
from transformers import AutoModelForCausalLM

from switch_core.config import Config, LoraConfig, load_config
from switch_core.models.lora import LoraSetupError, apply_lora, has_lora
from switch_core.models.tiny import tiny_causal_lm
from switch_core.tracking import JsonlTracker, read_jsonl_events
from switch_core.training import TrainJob, train
from switch_core.training.state import latest_state

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))
PAPER_PRESETS = [p for p in PRESETS if yaml.safe_load((ROOT / "presets" / f"{p}.yaml").read_text())
                 .get("teacher", {}).get("source") == "hf"]
FAMILIES = {"gpt2": "gpt2", "facebook/opt-": "opt", "openlm-research/open_llama": "llama"}


def _family(hub_name: str) -> str:
    return next(arch for prefix, arch in FAMILIES.items() if hub_name.startswith(prefix))


def _config(preset: str) -> Config:
    return load_config(ROOT / "params.yaml", preset=preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_with_every_run(preset: str) -> None:
    cfg = _config(preset)
    assert cfg.preset == preset
    for name in cfg.runs:  # per-run overrides validate and every run resolves to a method
        assert cfg.method_config(name) == cfg.run_config(name).methods[cfg.runs[name].method]
    if preset in PAPER_PRESETS:  # teacher and student of one family: they share the tokenizer (docs/METHOD.md §1.3)
        assert _family(cfg.teacher.name_or_path) == _family(cfg.student.name_or_path)


def test_paper_presets_cover_the_three_families() -> None:
    families = {_family(_config(p).teacher.name_or_path) for p in PAPER_PRESETS}
    assert families == {"gpt2", "opt", "llama"}


def test_openllama_preset_follows_the_distillm_scripts() -> None:
    """docs/METHOD.md §6.8 and scripts/openllama2/** of jongwooko/distillm."""
    cfg = _config("openllama2-7b-to-3b-lora")
    assert (cfg.teacher.name_or_path, cfg.student.name_or_path) == (
        "openlm-research/open_llama_7b_v2", "openlm-research/open_llama_3b_v2")
    assert cfg.student.lora == LoraConfig(r=16, alpha=64.0, dropout=0.1, target_modules=["q_proj", "v_proj"])
    distillm = cfg.method_config("distillm")
    assert (distillm.loss, distillm.alpha, distillm.init_threshold, distillm.loss_eps) == ("srkl", 0.1, 0.2, 0.2)
    assert cfg.method_config("switch").loss == "srkl"
    kd = cfg.run_config("kd")
    assert (kd.optim.lr, kd.optim.batch_size, kd.method_config("kd").kd_ratio, kd.runs["kd"].init_from) == (
        1e-5, 64, 0.5, "student-init")
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.warmup_optim.epochs) == (5e-4, 10, 3)


def _tiny_job(tmp_path: Path, cfg: Config, arch: str, *, max_steps: int = 1, resume: bool = False,
              save_every: int | None = None) -> TrainJob:
    """The preset's SWITCH run on tiny models of the preset's architecture: the preset's method, learning rate,
    weight decay, clipping and gradient checkpointing; small batches, 1 step, fixed τ0, no mixed precision (CPU)."""
    vocab = len(tokenizer())
    student = tiny_causal_lm(arch, vocab, hidden=32, layers=1, heads=2, seed=1)
    if cfg.student.lora is not None:
        apply_lora(student, cfg.student.lora, seed=cfg.optim.seed)
    teacher = tiny_causal_lm(arch, vocab, hidden=64, layers=2, heads=4, seed=0)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(3.0)  # peaked teacher distributions
    run_cfg = cfg.run_config("switch")
    optim = run_cfg.optim.model_copy(update={
        "batch_size": 4, "micro_batch_size": 2, "max_steps": max_steps, "mixed_precision": "no", "eval_examples": 2,
        "log_every": 1, "save_every": save_every,
    })
    rollout = run_cfg.rollout.model_copy(update={"tau0": 0.05, "max_new_tokens": 8, "batch_size": 4})
    return TrainJob(
        name="switch", student=student, tokenizer=tokenizer(), train=examples()[:8], dev=dev_data(2), optim=optim,
        method=run_cfg.method_config("switch"), output_dir=tmp_path / "models" / "switch",
        state_dir=tmp_path / "state" / "switch", select_by="loss", teacher=teacher, rollout=rollout,
        generation=run_cfg.eval.model_copy(update={"max_new_tokens": 4, "batch_size": 2}), max_prompt_length=32,
        resume=resume,
    )


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_preset_trains_one_switch_step_on_its_architecture(preset: str, tmp_path: Path) -> None:
    cfg = _config(preset)
    arch = _family(cfg.teacher.name_or_path)
    job = _tiny_job(tmp_path, cfg, arch)
    assert type(job.student).__name__.lower().startswith(arch)
    before = {k: v.clone() for k, v in job.student.state_dict().items()}
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    result = train(job, tracker=tracker)

    assert result.steps == 1
    step = next(e["metrics"] for e in read_jsonl_events(tracker.path, "metrics") if "train/loss" in e["metrics"])
    assert torch.isfinite(torch.tensor(step["train/loss"])) and step["train/loss"] > 0
    assert step["train/lr"] == pytest.approx(cfg.optim.lr)  # the preset's learning rate, first step of the cosine
    assert 0.0 <= step["rollout/teacher_share"] <= 1.0
    after = job.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {n for n, p in job.student.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable | {k for k in before if k.endswith("lm_head.weight")}  # tied head
    reloaded = AutoModelForCausalLM.from_pretrained(job.output_dir)
    assert not has_lora(reloaded)


def test_lora_preset_changes_adapters_only_and_saves_merged_weights(tmp_path: Path) -> None:
    cfg = _config("openllama2-7b-to-3b-lora")
    job = _tiny_job(tmp_path, cfg, "llama")
    trainable = {n for n, p in job.student.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # ...q_proj.lora_A.default.weight
    before = {k: v.clone() for k, v in job.student.state_dict().items()}
    train(job)

    after = job.student.state_dict()
    for key, value in before.items():
        if ".lora_B." in key:  # B starts at 0 and gets the whole first gradient
            assert not torch.equal(value, after[key]), key
        elif ".lora_" not in key:
            assert torch.equal(value, after[key]), f"{key} is frozen but changed"
    reloaded, info = AutoModelForCausalLM.from_pretrained(job.output_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys: a plain Llama checkpoint
    assert not any("lora" in k for k in reloaded.state_dict())
    ids = torch.randint(1, len(tokenizer()), (2, 12), generator=torch.Generator().manual_seed(0))
    job.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, job.student(ids).logits, rtol=1e-5, atol=1e-5)
        # the merged weight is W + (alpha / r)·B·A, computed here in float64
        prefix = "model.layers.0.self_attn.q_proj"
        w, a, b = (after[f"{prefix}.{part}"].double() for part in
                   ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight"))
        merged = w + (cfg.student.lora.alpha / cfg.student.lora.r) * b @ a
        torch.testing.assert_close(reloaded.state_dict()[f"{prefix}.weight"].double(), merged, rtol=0, atol=1e-6)


def test_lora_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _config("openllama2-7b-to-3b-lora")
    straight = _tiny_job(tmp_path / "straight", cfg, "llama", max_steps=2, save_every=1)
    train(straight)

    class Killed(Exception):
        pass

    class KillAtStep2(JsonlTracker):
        def log_metrics(self, metrics: dict, step: int) -> None:
            if step == 2 and "train/loss" in metrics:
                raise Killed  # after step 2's update, before its state is saved
            super().log_metrics(metrics, step)

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train(_tiny_job(cut, cfg, "llama", max_steps=2, save_every=1), tracker=KillAtStep2(cut / "killed.jsonl"))
    assert latest_state(cut / "state" / "switch").name == "step-00000001"
    resumed = _tiny_job(cut, cfg, "llama", max_steps=2, save_every=1, resume=True)
    tracker = JsonlTracker(cut / "resumed.jsonl")
    assert train(resumed, tracker=tracker).steps == 2
    trained = [e["step"] for e in read_jsonl_events(tracker.path, "metrics") if "train/loss" in e["metrics"]]
    assert trained == [2]  # it continued from the saved state (a fresh start would also train step 1)
    for key, value in straight.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_lora_on_modules_the_model_lacks_is_a_clear_error() -> None:
    model = tiny_causal_lm("gpt2", 300, hidden=32, layers=1, heads=2)
    with pytest.raises(LoraSetupError, match=r"student.lora.target_modules = \['q_proj'\].*c_attn"):
        apply_lora(model, LoraConfig(target_modules=["q_proj"]), seed=0)
