"""The validated configuration of a switch-kd run (the schema of ``params.yaml``).

Resolution order, later wins: the schema defaults below, ``params.yaml``, the preset file it names (or ``--preset``),
then ``--set key.path=value`` overrides. Everything is validated once, here, at the edge: an unknown key, a wrong type
or an out-of-range value raises :class:`ConfigError` with one line per problem naming the key path, the bad value, the
allowed range and, for a typo, the nearest valid key.

Defaults are the embedded default (SmolLM2-135M-Instruct teacher, a layer-pruned student, the procedural instruction
suite). Hyperparameters whose source is a paper or a reference implementation cite it (docs/METHOD.md: the project's
method notes).
"""
from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

MethodName = Literal["sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch", "minillm"]
DivergenceName = Literal["fkl", "rkl", "jsd", "skl", "srkl", "tvd"]
ROLLOUT_DATA = ("rollout", "mixed", "adaptive", "policy_gradient")
"""``MethodConfig.data`` modes that draw rollouts (they need the teacher and rollout settings)."""
StrategyName = Literal["switch", "student", "teacher", "random", "mixture", "skd", "adaswitch"]
"""Token source rules of the rollout engine (`switch_core.rollout.engine`)."""
ScheduleName = Literal["exponential", "linear", "constant"]
"""Threshold schedules τ_t of SWITCH's gate (`switch_core.rollout.schedules`)."""
DtypeName = Literal["float32", "bfloat16", "float16"]
"""Parameter dtypes of a loaded model (`switch_core.models.loading.load_causal_lm`)."""
MixedPrecision = Literal["no", "bf16", "fp16"]
"""Autocast settings of a run's forwards (accelerate's ``mixed_precision``; `switch_core.processes.autocast`)."""
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message is ready to show to the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Training data: where it comes from, how it is split and tokenised (docs/METHOD.md §5.1–5.3)."""

    source: Literal["embedded", "minillm", "dolly_raw", "hf"] = "embedded"
    path: str | None = Field(None, description="File/folder (minillm, dolly_raw) or dataset name/folder (hf).")
    hf_split: str = "train"
    hf_config: str | None = None
    embedded_size: int = Field(720, ge=10, description="Number of generated examples for source=embedded.")
    limit: int | None = Field(None, ge=1, description="Seeded subsample of the loaded records before splitting.")
    dev_size: int = Field(60, ge=1, description="Examples held out for dev loss / dev ROUGE-L (model selection).")
    test_size: int = Field(60, ge=0, description="Examples held out as the run's own test benchmark.")
    split_seed: int = 0
    max_length: int = Field(512, ge=2, description="Prompt + response + EOS tokens (METHOD.md §5.3).")
    max_prompt_length: int = Field(
        256, ge=1, description="Prompt tokens; a longer prompt is cut inside its instruction/input, its end kept."
    )
    prompt_format: Literal["minillm", "chat_template"] = Field(
        "minillm", description="How an instruction (and its input) becomes the prompt text: minillm = the MiniLLM "
        "template (docs/METHOD.md §5.2), chat_template = the tokenizer's chat template."
    )
    on_bad_rows: Literal["error", "skip"] = "error"
    seqkd_limit: int | None = Field(
        None, ge=1, description="SeqKD: the teacher answers only the first N training prompts (the run then trains on "
        "those N); None = all. Size it to what the SeqKD run consumes (optim.max_steps × optim.batch_size).",
    )

    @model_validator(mode="after")
    def _lengths(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be < data.max_length ({self.max_length}): "
                "the response needs at least one token"
            )
        if self.source != "embedded" and not self.path:
            raise ValueError(f"data.path is required when data.source = {self.source!r}")
        return self


class TinyModelConfig(_Strict):
    """A tiny random model (smoke tests, CI): architecture and sizes."""

    arch: Literal["gpt2", "opt", "llama"] = "llama"
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    vocab_size: int = Field(512, ge=64, description="Size of the byte-level BPE trained on the training split.")
    seed: int = 0


class TeacherConfig(_Strict):
    """The teacher: the embedded SmolLM2-135M-Instruct, any HF causal LM, a GGUF file, or a tiny random model."""

    source: Literal["embedded", "hf", "gguf", "tiny"] = "embedded"
    name_or_path: str | None = None
    gguf_file: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: DtypeName = Field(
        "float32", description="Frozen teacher's dtype (distillation, gate-profile, seqkd-data), and the dtype "
        "setup-teacher saves models/teacher-base in (the student is pruned from it). The teacher's SFT loads "
        "teacher-base in float32 and trains float32 weights (under teacher_optim.mixed_precision).",
    )
    sft: bool = Field(True, description="Fine-tune the teacher on the training split before distillation.")

    @model_validator(mode="after")
    def _needs_path(self) -> TeacherConfig:
        if self.source in ("hf", "gguf") and not self.name_or_path:
            raise ValueError(f"teacher.name_or_path is required when teacher.source = {self.source!r}")
        if self.source == "gguf" and not self.gguf_file:
            raise ValueError("teacher.gguf_file is required when teacher.source = 'gguf'")
        return self


class LoraConfig(_Strict):
    """LoRA adapters on the student (Hu et al. 2021): ``W + (alpha / r)·B·A`` on the target modules, all else frozen.

    Defaults: DistiLLM's OpenLLaMA-2 scripts (docs/METHOD.md §6.8, "LoRA r16/α64/drop0.1"); they give no target modules,
    so peft's default for the architecture applies (q_proj and v_proj for Llama and OPT, c_attn for GPT-2).
    """

    r: int = Field(16, ge=1, description="Rank of the update B·A.")
    alpha: float = Field(64.0, gt=0, description="The update is scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch's input (training only).")
    target_modules: list[str] | None = Field(
        None, description="Names (last part) of the modules that get adapters; None = peft's default for the "
        "architecture.",
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not name.strip() for name in v)):
            raise ValueError("must be null (the architecture's default) or a non-empty list of module names, "
                             "e.g. [q_proj, v_proj]")
        return v


class StudentConfig(_Strict):
    """The student: a layer-pruned copy of the teacher, any HF causal LM, or a fresh model from a config."""

    init: Literal["prune", "hf", "config", "tiny"] = "prune"
    name_or_path: str | None = Field(None, description="HF name/folder (init=hf) or config folder/json (init=config).")
    keep_layers: int | list[int] = Field(
        6, description="init=prune: a count (chosen by layer_selection) or explicit, strictly increasing indices."
    )
    layer_selection: Literal["even", "block_influence"] = Field(
        "even", description="init=prune with a count: which teacher layers to keep; even = evenly spaced, first and "
        "last included; block_influence = the highest Block Influence (ShortGPT, Men et al. 2024: BI = 1 - mean "
        "token cosine between a layer's input and output hidden states) on selection_examples train examples, ties "
        "to the lower index (METHOD.md §1.2).",
    )
    selection_examples: int = Field(
        32, ge=1, description="layer_selection=block_influence: first train examples (prompt + reference) BI is "
        "measured on.",
    )
    config_overrides: dict[str, Any] = Field(default_factory=dict, description="init=config: config fields to set.")
    tiny: TinyModelConfig = TinyModelConfig(hidden=32, layers=1, heads=2, seed=1)
    warmup: bool = Field(True, description="Warm-up ('init') before distillation (METHOD.md §1.2, §6.7).")
    warmup_method: Literal["sft", "kd"] = Field(
        "sft", description="The warm-up's loss on the reference responses: sft = cross-entropy (DistiLLM's 'init'); "
        "kd = forward KL to the teacher's token distributions (METHOD.md §6.2), the usual way to recover a pruned "
        "student (Minitron, Muralidharan et al. 2024); kd loads the teacher (models/teacher).",
    )
    lora: LoraConfig | None = Field(
        None, description="Train the student's LoRA adapters only (warm-up and every run; checkpoints are saved "
        "merged); null = full fine-tuning.",
    )

    @field_validator("keep_layers")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1")
        if isinstance(v, list) and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list of distinct layer indices >= 0")
        return v

    @model_validator(mode="after")
    def _needs_path(self) -> StudentConfig:
        if self.init in ("hf", "config") and not self.name_or_path:
            raise ValueError(f"student.name_or_path is required when student.init = {self.init!r}")
        if self.layer_selection == "block_influence" and isinstance(self.keep_layers, list):
            raise ValueError(
                f"student.layer_selection = 'block_influence' chooses the layers itself, but student.keep_layers = "
                f"{self.keep_layers} lists them: give student.keep_layers as a count, or set "
                "student.layer_selection = 'even' to keep exactly these indices"
            )
        return self


class OptimConfig(_Strict):
    """Optimisation of one training run (AdamW + cosine, docs/METHOD.md §6.8 'Settings shared by all runs')."""

    lr: float = Field(5e-4, gt=0)
    lr_min: float = Field(1e-7, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1, description="Global batch (sequences per optimizer step).")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass; accumulation makes up the rest.")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1, description="Also evaluate on dev every N steps (always per epoch).")
    eval_examples: int = Field(32, ge=1, description="Dev examples used for dev ROUGE-L.")
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(
        None, ge=1, description="Also save a resumable training state every N steps (always at each epoch end)."
    )
    select_by: Literal["auto", "rouge_l", "loss"] = Field(
        "auto",
        description="Best-checkpoint criterion on dev; auto = dev loss for the student warm-up, dev ROUGE-L otherwise "
        "(METHOD.md §5.6).",
    )
    loss_chunk_tokens: int = Field(
        256, ge=1, description="Response tokens per chunk of the full-vocabulary loss (bounds the logits' memory)."
    )
    mixed_precision: MixedPrecision = Field(
        "no", description="Autocast of a training run's forwards: losses, dev losses, dev ROUGE-L generations and "
        "every rollout; optim's also covers the gate-profile and seqkd-data stages, which stand for the distillation "
        "runs' rollouts. bf16 pays off on CPUs with AMX / avx512_bf16 (and on GPUs); results then differ from "
        "float32 at rounding level.",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        # `dvc exp run -S` rewrites params.yaml as YAML 1.2 and leaves `no` unquoted; PyYAML (YAML 1.1) reads False.
        return "no" if v is False else v
    gradient_checkpointing: bool = False
    seed: int = Field(10, description="Training seed (DistiLLM scripts use 10).")
    _key: str = PrivateAttr("optim")

    @property
    def key(self) -> str:
        """The section's key in :class:`Config` (``optim``, ``teacher_optim`` or ``warmup_optim``), so that a
        message names the key in force: ``f"{optim.key}.batch_size"``."""
        return self._key

    @model_validator(mode="after")
    def _batch(self) -> OptimConfig:
        # the error's location names the section (optim, teacher_optim or warmup_optim): the message does not
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must be <= lr ({self.lr})")
        return self


class RolloutConfig(_Strict):
    """The SWITCH rollout engine (docs/METHOD.md §1): gate, threshold schedule, strategy, sampling and τ0 calibration.

    The one declaration of these settings: `switch_core.rollout.settings.RolloutSettings` takes its decoding fields'
    defaults and validation from here, and the ``rollout`` / ``calibrate`` commands their options' defaults and help.
    """

    strategy: StrategyName = Field(
        "switch", description="Token source rule: switch (the JSD gate), student, teacher, random, mixture, skd "
        "(speculative KD: the teacher resamples a student token outside its top-k) or adaswitch (the teacher writes "
        "the rest of a row once the JSD exceeds K times its recent mean)."
    )
    schedule: ScheduleName = Field("exponential", description="Threshold schedule τ_t of the gate.")
    tau0: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="JSD threshold at t=0 in nats; None = calibrate, searching only (0, ln 2] (a target out of reach "
        "there keeps ln 2 and is reported). The JSD is at most ln 2, so a τ0 > ln 2 given here leaves the first "
        "response tokens to the student alone (how many: switch_core.rollout.schedules.student_only_positions); the "
        "run's train_summary.json names it a position switch (gate.position_switch).",
    )
    target_teacher_share: float = Field(
        0.53, gt=0, lt=1,
        description="Calibration target: teacher share of the rollout tokens (docs/METHOD.md §1.1 item 4).",
    )
    decay: float = Field(0.1, ge=0, allow_inf_nan=False, description="λ of τ_t = τ0·exp(−λ·t), per response token.")
    horizon: int | None = Field(
        None, ge=1, description="T of the linear schedule in tokens; None = max_new_tokens."
    )
    random_rate: float = Field(0.5, ge=0, le=1, description="strategy=random: teacher probability per token.")
    mixture_alpha: float = Field(0.2, ge=0, le=1, description="strategy=mixture: α of α·p + (1−α)·q.")
    skd_top_k: int = Field(
        25, ge=1, description="strategy=skd: a student token outside the teacher's top-k tokens is replaced by a "
        "teacher draw (SKD, Xu et al. 2025: top_k 25 in their kd_train.yaml).",
    )
    adaswitch_window: int = Field(
        10, ge=1, description="strategy=adaswitch: positions in the moving average of the JSD (AdaSwitch's sliding "
        "window; the paper's value is not in its public summary, 10 is this project's choice).",
    )
    adaswitch_k: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="strategy=adaswitch: the teacher takes over a row at the first "
        "position whose JSD exceeds adaswitch_k times its moving average (AdaSwitch's τ = K·d̄; 2.0 is this "
        "project's choice).",
    )
    max_new_tokens: int = Field(256, ge=1, description="Response length limit in tokens (docs/METHOD.md §5.3).")
    greedy: bool = Field(False, description="Argmax decoding instead of sampling.")
    temperature: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="Divides the logits, for sampling and for the gate's JSD."
    )
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1.0 = off.")
    calibration_prompts: int = Field(
        32, ge=1, description="Prompts (the first N training prompts) the τ0 search rolls out at each try."
    )
    calibration_evaluations: int = Field(
        12, ge=1, description="Rollout passes the τ0 search may use before it keeps the closest τ0 found."
    )
    calibration_tolerance: float = Field(
        0.02, ge=0, lt=1, description="The τ0 search stops when |teacher share − target| <= this."
    )
    batch_size: int = Field(8, ge=1, description="Prompts per rollout batch.")
    engine: Literal["speculative", "lockstep"] = Field(
        "speculative", description="speculative = one model drafts, the other verifies a chunk in one forward "
        "(switch_core.rollout.speculative); lockstep = one token at a time. The same tokens for the same seed "
        "(exactly in float64; in float32 chunked forwards round differently at ~0.3% of positions).",
    )
    max_draft_tokens: int = Field(
        8, ge=1, description="engine=speculative: longest draft; the planner picks the chunk length below it.",
    )


class GateProfileConfig(_Strict):
    """The ``gate-profile`` stage: where SWITCH's gate could act, measured before distillation (docs/METHOD.md §1.4).

    The stage decodes these prompts with the warmed-up student alone (the ``rollout`` section's decoding settings,
    strategy ``student``) and records the JSD to the teacher at every response position
    (`switch_core.commands.gate_profile`).
    """

    prompts: int = Field(
        32, ge=1, description="Dev prompts (a subset drawn with `seed`) the gate-profile stage decodes with the "
        "warmed-up student alone, recording the JSD to the teacher at every response position.",
    )


class MethodConfig(_Strict):
    """How one distillation method builds its batches and its loss (docs/METHOD.md §6)."""

    loss: DivergenceName | Literal["ce"] = Field(
        "fkl", description="Divergence to the teacher; 'ce' = plain cross-entropy on the batch's labels (no teacher)."
    )
    kd_ratio: float = Field(1.0, ge=0, le=1, description="L = (1−kd_ratio)·CE + kd_ratio·D (METHOD.md §6).")
    beta: float = Field(0.1, ge=0, le=1, description="Generalised JSD β (GKD; DistiLLM js_distance lam=0.9).")
    alpha: float = Field(0.1, ge=0, le=1, description="Skew α of SKL/SRKL (DistiLLM --skew-alpha).")
    data: Literal["ground_truth", "seqkd", "rollout", "mixed", "adaptive", "policy_gradient"] = Field(
        "ground_truth",
        description="Batch source (switch_core.training.sources); policy_gradient = MiniLLM's PPO on rollouts.",
    )
    on_policy_fraction: float = Field(0.5, ge=0, le=1, description="GKD λ: probability of a rollout batch.")
    replay: bool = Field(False, description="Train on batches drawn from a FIFO replay buffer of rollouts.")
    replay_capacity: int = Field(1000, ge=1)
    init_threshold: float = Field(0.0, ge=0, le=1, description="DistiLLM adaptive φ start.")
    loss_eps: float = Field(0.1, ge=0, description="DistiLLM adaptive: raise φ when val loss grows by > eps.")
    reuse_rollout_teacher_logits: bool = Field(True, description="switch: skip the second teacher forward.")
    teacher_logits_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the kept rollout teacher logits (bfloat16 halves their memory)."
    )
    rollout_strategy: StrategyName | None = Field(
        None, description="Generator of rollout batches; None = rollout.strategy."
    )
    supervise_stop: bool = Field(
        False,
        description="Rollout data (rollout, mixed, adaptive): a rollout row cut at rollout.max_new_tokens without a "
        "stop token gets the stop token appended as its last label, and every rollout row's stop label (emitted or "
        "appended) adds the cross-entropy −log q(stop) to its loss, on top of the method's loss (SKD's practice of "
        "always supervising the end-of-turn token against the stop-token collapse of on-policy KD, docs/METHOD.md "
        "§6.10). The rollout's teacher logits are then not reused (the loss runs the teacher). Not with "
        "policy_gradient.",
    )
    ppo_epochs: int = Field(
        4, ge=1, description="policy_gradient: optimizer steps on each rollout batch (MiniLLM --ppo-epochs 4)."
    )
    ppo_clip: float = Field(0.2, gt=0, lt=1, description="policy_gradient: PPO ratio clip ε (MiniLLM --cliprange).")
    gamma: float = Field(0.95, ge=0, le=1, description="policy_gradient: reward discount γ (MiniLLM --gamma).")
    reward_scaling: float = Field(
        0.5, gt=0, description="policy_gradient: rewards are divided by this (MiniLLM --reward-scaling)."
    )
    reward_clip: float = Field(
        100.0, gt=0,
        description="policy_gradient: scaled rewards are clipped to ±this (MiniLLM --cliprange-reward; its GPT-2 "
        "scripts set 100, the argument default is 1).",
    )
    single_step_reg: bool = Field(
        True, description="policy_gradient: add the per-token KL(q‖p) over the vocabulary (MiniLLM --single-step-reg)."
    )
    lm_coef: float = Field(
        0.0, ge=0,
        description="policy_gradient: weight of the LM loss (0.5·CE + 0.5·FKL) on a pre-training corpus batch "
        "(MiniLLM --lm-coef; 0 = off).",
    )
    lm_data: str | None = Field(
        None, description="policy_gradient with lm_coef > 0: pre-training text, a .jsonl/.json file with a 'text' "
        "field or a .txt file (one document per non-empty line).",
    )

    @model_validator(mode="after")
    def _policy_gradient(self) -> MethodConfig:
        if self.lm_coef > 0 and self.data != "policy_gradient":
            raise ValueError(
                f"lm_coef = {self.lm_coef} needs data: policy_gradient (the pre-training LM term is MiniLLM's, "
                "METHOD.md §6.5); set lm_coef: 0.0"
            )
        if self.lm_coef > 0 and not self.lm_data:
            raise ValueError("lm_coef > 0 needs lm_data: a .jsonl/.json (field 'text') or .txt pre-training file")
        if self.supervise_stop and self.data not in ("rollout", "mixed", "adaptive"):
            raise ValueError(
                f"supervise_stop acts on rollout batches of data: rollout, mixed or adaptive, not data: {self.data} "
                "(reference batches already end with their stop token; MiniLLM's stored policy values would not "
                "cover an appended one); set supervise_stop: false"
            )
        if self.data == "policy_gradient":
            if self.loss != "rkl" or self.kd_ratio != 1.0:
                raise ValueError(
                    f"data: policy_gradient (MiniLLM) needs loss: rkl and kd_ratio: 1.0, got loss: {self.loss}, "
                    f"kd_ratio: {self.kd_ratio} (its single-step term is KL(q‖p), METHOD.md §6.5)"
                )
            if self.replay:
                raise ValueError("data: policy_gradient reuses each rollout for ppo_epochs steps: set replay: false")
        return self


def _default_methods() -> dict[str, MethodConfig]:
    """Per-method defaults, from the reference implementations (docs/METHOD.md §6).

    - imitkd, gkd, distillm sample pure student rollouts; their rollouts go through the FIFO replay buffer and the
      trained batch is drawn from it, as in DistiLLM's ``finetune.py`` (docs/METHOD.md §6.4, §6.6, §6.9 item 3). For GKD
      ``replay=False`` gives the GKD paper's / TRL's variant (train on the fresh rollout).
    - switch trains on fresh SWITCH rollouts with DistiLLM's skew KL (α = 0.1): the paper does not say which loss it
      used (docs/METHOD.md §1.2), and keeping DistiLLM's loss makes the comparison with DistiLLM isolate the generator.
      Ablate with ``methods.switch.loss`` (fkl, jsd, srkl...) and the engine's strategies with ``rollout.strategy``.
    - minillm: sequence-level reverse KL by policy gradient (METHOD.md §6.5) on teacher-mixed rollouts (the engine's
      ``mixture`` strategy; its α is ``rollout.mixture_alpha``, 0.2 as MiniLLM's --teacher-mixed-alpha), a fresh
      rollout every ``ppo_epochs`` = 4 steps, γ 0.95, reward scaling 0.5, reward clip 100 (the GPT-2 scripts' value),
      PPO clip 0.2, the single-step KL(q‖p) term on; the pre-training LM term is off (``lm_coef`` 0: no corpus
      offline). MiniLLM's own optimiser settings (lr 5e-6 constant) are not applied: ``optim`` is shared by all runs.
    """
    return {
        "sft": MethodConfig(loss="ce", kd_ratio=0.0),
        "kd": MethodConfig(loss="fkl"),
        "seqkd": MethodConfig(loss="fkl", data="seqkd"),
        "imitkd": MethodConfig(loss="fkl", data="rollout", replay=True, rollout_strategy="student"),
        "gkd": MethodConfig(
            loss="jsd", beta=0.1, data="mixed", on_policy_fraction=0.5, replay=True, rollout_strategy="student"
        ),
        "distillm": MethodConfig(loss="skl", alpha=0.1, data="adaptive", replay=True, rollout_strategy="student"),
        "switch": MethodConfig(loss="skl", alpha=0.1, data="rollout"),
        "minillm": MethodConfig(loss="rkl", data="policy_gradient", rollout_strategy="mixture"),
    }


def reference_stage_method(name: Literal["sft", "kd"]) -> MethodConfig:
    """The loss of a stage trained on the reference responses before distillation (the teacher's SFT: ``sft``; the
    student's warm-up: ``student.warmup_method``): the built-in method's defaults, not ``methods.<name>``, whose
    overrides belong to the distillation runs."""
    return _default_methods()[name]


class DistillRun(_Strict):
    """One named training run: a method, its starting checkpoint, and config overrides for that run only."""

    method: MethodName
    init_from: str = Field("student-sft", description="'student-init', 'student-sft' or another run's name.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted keys, e.g. {'rollout.tau0': 0.3}.")


def _default_runs() -> dict[str, DistillRun]:
    return {m: DistillRun(method=m) for m in ("sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch")}


class EvalConfig(_Strict):
    """Benchmark evaluation protocol (docs/METHOD.md §5.4–5.5)."""

    benchmarks: list[str] = Field(default_factory=lambda: ["embedded"])
    data_dir: str = Field("../shared/data", description="Folder holding the MiniLLM-format benchmark sets.")
    seeds: list[int] = Field(default_factory=lambda: [10, 20, 30, 40, 50])
    limit: int | None = Field(None, ge=1, description="Examples per benchmark (seeded subsample); None = all.")
    max_prompt_length: int = Field(256, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    no_repeat_ngram_size: int = Field(6, ge=0)
    batch_size: int = Field(16, ge=1)
    dtype: DtypeName = Field(
        "float32", description="Parameter dtype of the evaluated model (bfloat16: about 2x faster on CPUs with AMX / "
        "avx512_bf16; scores differ from float32 at rounding level). Part of the protocol record: a change "
        "re-evaluates.",
    )

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one seed")
        return v


class TrackingConfig(_Strict):
    """Where metrics go. MLflow is wired in by the orchestration layer; switch_core only sees a Tracker."""

    backend: Literal["mlflow", "jsonl", "none"] = "mlflow"
    mlflow_uri: str | None = Field(None, description="None = sqlite store in the project folder.")
    experiment: str = "switch-kd"


class DistributedConfig(_Strict):
    """How a run on several processes shares the work (ignored by a one-process run, which is unchanged)."""

    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp",
        description="Student engine on >1 process: ddp (full replica per process, gradients all-reduced by DDP) or "
        "fsdp2 (torch fully_shard: parameters, gradients and AdamW moments sharded over processes).",
    )
    teacher: Literal["replicate", "shard"] = Field(
        "replicate",
        description="The frozen teacher on >1 process: a full copy per process, or sharded with fully_shard "
        "(inference only; needs strategy=fsdp2). Rollouts gather the sharded weights (README, Distributed).",
    )

    @model_validator(mode="after")
    def _shard_needs_fsdp2(self) -> DistributedConfig:
        if self.teacher == "shard" and self.strategy != "fsdp2":
            raise ValueError(
                f"distributed.teacher=shard needs distributed.strategy=fsdp2 (got {self.strategy!r}); set "
                "strategy: fsdp2 or teacher: replicate"
            )
        return self


class Config(_Strict):
    """A fully resolved switch-kd configuration."""

    preset: str | None = Field(None, description="Name in presets/ or path of a params file applied on top.")
    run_dir: str = Field("runs/default", description="Where stage outputs go, relative to the project root.")
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    teacher_optim: OptimConfig = OptimConfig(lr=5e-5, epochs=2)
    warmup_optim: OptimConfig = OptimConfig(lr=5e-4, epochs=2)
    optim: OptimConfig = OptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    gate_profile: GateProfileConfig = GateProfileConfig()
    methods: dict[str, MethodConfig] = Field(default_factory=_default_methods)
    runs: dict[str, DistillRun] = Field(default_factory=_default_runs)
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    distributed: DistributedConfig = DistributedConfig()

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: dict[str, MethodConfig]) -> dict[str, MethodConfig]:
        known = MethodName.__args__  # type: ignore[attr-defined]
        for name in v:
            if name not in known:
                raise ValueError(f"unknown method {name!r}{_did_you_mean(name, known)}; methods are {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _optim_keys(self) -> Config:
        for key in ("teacher_optim", "warmup_optim", "optim"):
            getattr(self, key)._key = key
        return self

    @model_validator(mode="after")
    def _runs_resolve(self) -> Config:
        bases = {"student-init", "student-sft"}
        reserved = bases | {"teacher", "teacher-base"}
        for name, run in self.runs.items():
            if name in reserved:
                raise ValueError(f"runs.{name}: the names {sorted(reserved)} are reserved for the model checkpoints")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"runs.{name}: run names may use letters, digits, '_' and '-' only (they name "
                                 "folders and DVC stages)")
            if run.init_from not in bases and run.init_from not in self.runs:
                valid = sorted(bases | set(self.runs) - {name})
                raise ValueError(
                    f"runs.{name}.init_from = {run.init_from!r} is neither a student checkpoint nor a run"
                    f"{_did_you_mean(run.init_from, valid)}; valid: {', '.join(valid)}"
                )
        for name in self.runs:  # cycle check
            seen, cur = {name}, self.runs[name].init_from
            while cur in self.runs:
                if cur in seen:
                    raise ValueError(f"runs.{name}: init_from forms a cycle through {cur!r}")
                seen.add(cur)
                cur = self.runs[cur].init_from
        return self

    def run_config(self, run_name: str) -> Config:
        """The config of one named run: this config with the run's ``overrides`` applied and validated.

        Raises:
            ConfigError: unknown run name, or an override that does not validate.
        """
        if run_name not in self.runs:
            hint = ""
            if run_name in MethodName.__args__:  # type: ignore[attr-defined]
                hint = (f"; {run_name!r} is a method that no run uses: add a run of it with --set "
                        f"runs.{run_name}.method={run_name} (or list it under `runs` in the params file or a preset)")
            raise ConfigError(f"unknown run {run_name!r}{_did_you_mean(run_name, list(self.runs))}{hint}")
        overrides = self.runs[run_name].overrides
        if not overrides:
            return self
        return validate_dict(apply_overrides(self.model_dump(), overrides), origin=f"runs.{run_name}.overrides")

    def method_config(self, run_name: str) -> MethodConfig:
        """The MethodConfig of a named run (after its overrides)."""
        cfg = self.run_config(run_name)
        return cfg.methods.get(cfg.runs[run_name].method, _default_methods()[cfg.runs[run_name].method])


# --------------------------------------------------------------------------------------------------------------
# Loading, merging, overrides, error messages


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; dicts merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists, null).

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {text!r} (example: --set optim.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({err})") from err
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{"optim.lr": 1e-4}``) in a copy of a config dict; unknown paths are kept so that
    validation reports them with a did-you-mean hint."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section: cannot set {dotted}")
            node = nxt
        node[parts[-1]] = value
    return out


def _fields_at(path: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section at ``path`` (for did-you-mean hints)."""
    model: Any = Config
    for part in path:
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            ann = model.model_fields[part].annotation
            # ``Section | None`` (an optional section such as student.lora): the section's own keys
            sections = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = sections[0] if len(sections) == 1 else ann
        elif model in (dict[str, MethodConfig],):
            model = MethodConfig
        elif model in (dict[str, DistillRun],):
            model = DistillRun
        else:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _one_of(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: key path, bad value, what is allowed, nearest valid key for typos.

    Pydantic reports a value outside a union of literals (``DivergenceName | Literal["ce"]``) once per member; those
    reports become one line listing every allowed value.
    """
    problems: dict[tuple[tuple[Any, ...], str], list[dict[str, Any]]] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal"))))
        problems.setdefault((loc, repr(e.get("input"))), []).append(e)
    lines = [f"invalid configuration ({origin}):"]
    for (loc, _), errors in problems.items():
        path = ".".join(str(p) for p in loc) or "<root>"
        value = errors[0].get("input")
        if errors[0]["type"] == "extra_forbidden":
            hint = _did_you_mean(loc[-1], _fields_at(loc[:-1]))
            valid = ", ".join(_fields_at(loc[:-1]))
            lines.append(f"  - {path}: unknown key{hint}; valid keys here: {valid}")
            continue
        options = [
            option.strip()
            for e in errors if e["type"] == "literal_error"
            for option in str(e.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")
        ]
        messages = [e["msg"].removeprefix("Value error, ") for e in errors if e["type"] != "literal_error"]
        if options:
            hint = _did_you_mean(value, [o.strip("'") for o in options])
            messages.insert(0, f"must be one of {_one_of(options)}{hint}")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"  - {path}{shown}: {' or '.join(dict.fromkeys(messages))}")
    return "\n".join(lines)


def validate_dict(data: dict[str, Any], origin: str = "config") -> Config:
    """Validate a raw config dict into a :class:`Config`.

    Raises:
        ConfigError: with one line per problem (see :func:`format_validation_error`).
    """
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def _merge_layer(data: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Merge one config file over ``data``; a ``runs`` mapping in the file replaces the runs (it is the list of runs
    to train, as DVC's ``foreach: ${runs}`` sees it), everything else merges key by key."""
    merged = deep_merge(data, layer)
    if isinstance(layer.get("runs"), dict):
        merged["runs"] = copy.deepcopy(layer["runs"])
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def resolve_preset(preset: str, base_dir: Path) -> Path:
    """Path of a preset given by name (``presets/<name>.yaml``) or by path.

    Raises:
        ConfigError: when neither exists; lists the available presets.
    """
    candidates = [Path(preset), base_dir / preset, base_dir / "presets" / f"{preset}.yaml", PRESETS_DIR / f"{preset}.yaml"]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    available = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
    raise ConfigError(
        f"preset {preset!r} not found{_did_you_mean(preset, available)}; available presets: {', '.join(available)}"
    )


PRESET_BASES = {
    "params": "on top of the params file (the embedded default in params.yaml), for presets that change a few keys",
    "defaults": "on top of the schema defaults (the paper protocol, docs/METHOD.md §5), ignoring the params file's "
    "values, for presets that describe a whole experiment",
}
"""What a preset file's optional top-level ``base`` key may name: what the preset is applied on top of."""


def load_config(
    params: str | Path | None = "params.yaml",
    *,
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load and validate a configuration.

    Args:
        params: the params file (DVC's ``params.yaml``); None = schema defaults only.
        preset: a preset name or path applied on top of ``params`` (default: the file's own ``preset`` key); a
            preset with ``base: defaults`` is applied on top of the schema defaults instead (:data:`PRESET_BASES`),
            so that the embedded default's short runs do not leak into a whole-experiment preset.
        overrides: ``["a.b=value", ...]`` (CLI ``--set``) or ``{"a.b": value}``, applied last.

    Returns:
        The validated :class:`Config`; ``preset`` holds the preset that was applied.

    Raises:
        ConfigError: a missing file, invalid YAML, or any validation problem.
    """
    base_dir = Path(params).resolve().parent if params else Path.cwd()
    data: dict[str, Any] = Config().model_dump()
    origin = "defaults"
    if params is not None:
        data = _merge_layer(data, _read_yaml(Path(params)))
        origin = str(params)
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    overrides = dict(overrides or {})
    chosen = preset or overrides.get("preset") or data.get("preset")
    if chosen:
        preset_path = resolve_preset(str(chosen), base_dir)
        layer = _read_yaml(preset_path)
        base = layer.pop("base", "params")
        if base not in PRESET_BASES:
            raise ConfigError(f"{preset_path}: base = {base!r}; use one of {', '.join(PRESET_BASES)} "
                              f"({'; '.join(f'{k}: {v}' for k, v in PRESET_BASES.items())})")
        if base == "defaults":
            data, origin = Config().model_dump(), "defaults"
        data = _merge_layer(data, layer)
        data["preset"] = str(chosen)
        origin += f" + preset {preset_path.name}"
    if overrides:
        data = apply_overrides(data, overrides)
        origin += " + --set " + " ".join(f"{k}={v}" for k, v in overrides.items())
    return validate_dict(data, origin)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict into dotted keys (for MLflow params and DVC)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
