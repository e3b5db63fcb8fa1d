"""What each training stage (teacher SFT, student warm-up, every distillation run) trains on and with which loss, in
words: the Methods table of docs/RESULTS.md.

The text is derived from the validated configuration alone (a run's ``overrides`` applied), so the document states
the settings that were actually in force, including the defaults a preset did not spell out (docs/METHOD.md §6; the
SWITCH loss, which the paper leaves open, is whatever ``methods.switch.loss`` resolved to).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from switch_core.config import Config, MethodConfig, OptimConfig, RolloutConfig, reference_stage_method


@dataclass(frozen=True)
class MethodDescription:
    """One training stage in words: its method, starting checkpoint, batch source, loss, optimiser and which of its
    checkpoints is kept (and evaluated)."""

    method: str
    init_from: str
    batches: str
    loss: str
    optimizer: str
    selection: str


def loss_text(method: MethodConfig) -> str:
    """The training loss of a method configuration, with its parameters.

    p is the teacher's next-token distribution and q the student's; the loss is per response token, averaged
    (METHOD.md §6): forward KL KL(p‖q), reverse KL KL(q‖p), generalised JSD with weight β (GKD, Agarwal et al. 2024,
    eq. 1), skew KL KL(p‖αp+(1−α)q) and skew reverse KL KL(q‖αq+(1−α)p) (DistiLLM, Ko et al. 2024, eq. 4), total
    variation; ``kd_ratio`` < 1 mixes in the cross-entropy on the batch's tokens.
    """
    divergence = {
        "ce": "cross-entropy on the batch's response tokens (no teacher)",
        "fkl": "forward KL KL(p‖q)",
        "rkl": "reverse KL KL(q‖p)",
        "jsd": f"generalised JSD β·KL(p‖m)+(1−β)·KL(q‖m), m = βp+(1−β)q (β = {method.beta:g})",
        "skl": f"skew KL KL(p‖αp+(1−α)q) (α = {method.alpha:g})",
        "srkl": f"skew reverse KL KL(q‖αq+(1−α)p) (α = {method.alpha:g})",
        "tvd": "total variation distance",
    }[method.loss]
    if method.data == "policy_gradient":
        single = " + the per-token KL(q‖p) term" if method.single_step_reg else ""
        lm = f" + {method.lm_coef:g}·LM loss on pre-training text" if method.lm_coef > 0 else ""
        return f"sequence-level reverse KL by PPO (clip {method.ppo_clip:g}, γ {method.gamma:g}){single}{lm}"
    if method.loss == "ce" or method.kd_ratio == 1.0:
        return divergence
    return f"{1 - method.kd_ratio:g}·cross-entropy + {method.kd_ratio:g}·{divergence}"


def generator_text(strategy: str, rollout: RolloutConfig) -> str:
    """Who writes the tokens of a rollout (the engine's strategies, docs/METHOD.md §1)."""
    if strategy == "switch":
        share = f"{100 * rollout.target_teacher_share:.0f}%"
        tau0 = (f"τ0 calibrated inside (0, ln 2] towards a {share} teacher share" if rollout.tau0 is None
                else f"τ0 = {rollout.tau0:g}")
        schedule = {"exponential": f"τ_t = τ0·exp(−{rollout.decay:g}·t)",
                    "linear": f"τ_t = τ0·(1 − t/{rollout.horizon or rollout.max_new_tokens})",
                    "constant": "τ_t = τ0"}[rollout.schedule]
        return f"SWITCH rollouts (the teacher writes a token when JSD > {schedule}; {tau0})"
    return {
        "student": "student rollouts (SGOs)",
        "teacher": "teacher rollouts",
        "random": f"rollouts with a random writer per token (teacher with probability {rollout.random_rate:g})",
        "mixture": f"rollouts sampled from {rollout.mixture_alpha:g}·p + {1 - rollout.mixture_alpha:g}·q",
        "skd": f"SKD rollouts (the teacher resamples a student token outside its top {rollout.skd_top_k})",
        "adaswitch": f"AdaSwitch rollouts (the teacher writes the rest of a response once the JSD exceeds "
                     f"{rollout.adaswitch_k:g}× its mean over the previous {rollout.adaswitch_window} tokens)",
    }[strategy]


def batches_text(method: MethodConfig, rollout: RolloutConfig) -> str:
    """What a training batch of the method holds (switch_core.training.sources)."""
    rollouts = f"{generator_text(method.rollout_strategy or rollout.strategy, rollout)} of up to {rollout.max_new_tokens} " \
        "new tokens"
    replayed = f"{rollouts}, drawn from a replay buffer of {method.replay_capacity}" if method.replay else rollouts
    return {
        "ground_truth": "the training split's reference responses",
        "seqkd": "the teacher's sampled responses to the training prompts (SeqKD)",
        "rollout": replayed if method.replay else f"fresh {rollouts}",
        "mixed": f"{replayed} with probability {method.on_policy_fraction:g}, else reference responses",
        "adaptive": (f"{rollouts} (fresh or replayed from a buffer of {method.replay_capacity}) with probability φ, "
                     f"else reference responses; φ starts at {method.init_threshold:g} and rises by 0.1 whenever the "
                     f"dev loss grows by at least {method.loss_eps:g} (DistiLLM's adaptive off-policy schedule)"),
        "policy_gradient": f"{rollouts}, each reused for {method.ppo_epochs} PPO steps",
    }[method.data]


def optimizer_text(optim: OptimConfig) -> str:
    """Learning rate, global batch and length of a training stage."""
    epochs = f"{optim.epochs} epoch{'s' * (optim.epochs != 1)}"
    steps = f"{optim.max_steps} steps" if optim.max_steps is not None else epochs
    return f"lr {optim.lr:g}, batch {optim.batch_size}, {steps}"


def selection_text(optim: OptimConfig, *, warmup: bool = False) -> str:
    """Which checkpoint of a stage is kept: the best on dev by ``optim.select_by`` (``auto``: dev loss for the student
    warm-up, dev ROUGE-L otherwise; METHOD.md §5.6), checked every ``eval_every`` steps (else at each epoch end) and at the last step."""
    criterion = optim.select_by if optim.select_by != "auto" else ("loss" if warmup else "rouge_l")
    when = (f"every {optim.eval_every} steps and at the last step" if optim.eval_every
            else "at each epoch end and at the last step")
    name = {"loss": "loss", "rouge_l": "ROUGE-L"}[criterion]
    return f"best dev {name} on {optim.eval_examples} dev examples, checked {when}"


def describe_run(config: Config, run: str) -> MethodDescription:
    """The :class:`MethodDescription` of a named run of ``config`` (its overrides applied).

    Raises:
        switch_core.config.ConfigError: unknown run name or invalid overrides.
    """
    cfg = config.run_config(run)
    method = cfg.method_config(run)
    return MethodDescription(
        method=cfg.runs[run].method, init_from=cfg.runs[run].init_from,
        batches=batches_text(method, cfg.rollout), loss=loss_text(method),
        optimizer=optimizer_text(cfg.optim), selection=selection_text(cfg.optim),
    )


def describe_sft_stages(config: Config) -> dict[str, MethodDescription]:
    """The teacher SFT and the student warm-up, when the configuration trains them, keyed by their stage label."""
    stages = {}
    if config.teacher.sft:
        stages["teacher SFT"] = MethodDescription(
            "sft", "teacher-base", "the training split's reference responses",
            loss_text(reference_stage_method("sft")),
            optimizer_text(config.teacher_optim), selection_text(config.teacher_optim))
    if config.student.warmup:
        warmup = config.student.warmup_method
        stages["student warm-up"] = MethodDescription(
            warmup, "student-init", "the training split's reference responses",
            loss_text(reference_stage_method(warmup)),
            optimizer_text(config.warmup_optim), selection_text(config.warmup_optim, warmup=True))
    return stages


def methods_table(descriptions: Mapping[str, MethodDescription], logged: Mapping[str, str] | None = None) -> str:
    """Markdown table: stage or run, method, starting checkpoint, batches, loss, optimiser, kept checkpoint, and the
    ``logged`` column (e.g. the share of rollout batches actually trained on; "–" for names it lacks)."""
    logged = logged or {}
    header = "| stage | method | starts from | trains on | loss | optimiser | checkpoint kept | rollout batches (logged) |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {d.method} | {d.init_from} | {d.batches} | {d.loss} | {d.optimizer} | {d.selection} | "
              f"{logged.get(name, '–')} |" for name, d in descriptions.items()]
    return "\n".join(lines)
