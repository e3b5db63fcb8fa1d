"""The inputs of the ``rollout`` and ``calibrate`` commands: their shared options (declared by the ``rollout`` config
section's schema; ``--mixed-precision`` by ``optim.mixed_precision``'s, the autocast a training run's rollouts run
under), the prompts file, the models and tokenizer, the tokenised prompt batches, the settings and the τ0 search.
"""
from __future__ import annotations

import argparse
import json
import re
import typing
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from switch_core.config import DataConfig, DtypeName, OptimConfig, RolloutConfig
from switch_core.data.prompts import instruction_prompt
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.processes import autocast
from switch_core.rollout import CalibrationResult, RolloutSettings, calibrate_tau0


class PromptFileError(ValueError):
    """The prompts file is missing, empty or has a bad line (the message names the line)."""


class OptionError(ValueError):
    """A command-line option is out of range (the message names it)."""


_OPTION_NAMES = {
    "target_teacher_share": "--target-share", "calibration_prompts": "--max-prompts",
    "calibration_evaluations": "--max-evaluations", "calibration_tolerance": "--tolerance",
}
"""Config fields whose option is not named after the field (the rule: ``max_new_tokens`` -> ``--max-new-tokens``)."""


def option_name(field: str) -> str:
    """The command-line option of a config field, e.g. ``--max-new-tokens`` for ``max_new_tokens``."""
    return _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


GIVEN = "given_options"
"""The ``args`` attribute listing the config fields whose option was given on the command line."""

_SCOPE = re.compile(r"(strategy|engine)=(\w+):")
"""The start of the description of a field that only one strategy or engine reads, e.g. ``strategy=skd:``."""


class _StoreGiven(argparse.Action):
    """``store``, and remember that the option was given (``args.given_options``), so that a warning can tell an option
    the user gave from a default."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, (*getattr(namespace, GIVEN, ()), self.dest))


def ignored_options(args: argparse.Namespace, config: RolloutConfig) -> list[str]:
    """One warning per option given on the command line that the chosen strategy or engine does not read (a field
    whose description starts with ``strategy=NAME:`` or ``engine=NAME:``), e.g. ``--max-draft-tokens`` with
    ``--engine lockstep``; defaults are never named."""
    warnings = []
    for field in dict.fromkeys(getattr(args, GIVEN, ())):
        info = RolloutConfig.model_fields.get(field)
        match = _SCOPE.match(info.description or "") if info is not None else None
        if match and getattr(config, match[1]) != match[2]:
            key, wanted = match[1], match[2]
            warnings.append(f"{option_name(field)} applies to --{key} {wanted} only; ignored with --{key} "
                            f"{getattr(config, key)}")
    return warnings


def add_config_option(group: Any, section: type[BaseModel], field: str) -> None:
    """Add the option of a config field (e.g. ``RolloutConfig``'s ``tau0``): its default, type, choices and help are
    the schema's, so a setting is declared once. The parsed value lands in ``args.<field>``; a non-boolean option
    that was given is also listed in ``args.given_options`` (:func:`ignored_options`).

    Args:
        group: an ``argparse`` parser or argument group.
        section: the config section class (`switch_core.config`).
        field: the field's name.
    """
    info = section.model_fields[field]
    kind = info.annotation
    if typing.get_origin(kind) is not Literal:  # `X | None` -> X
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    name = option_name(field)
    help_text = f"{info.description or field} (default: {info.default})".replace("%", "%%")
    if kind is bool:
        action = argparse.BooleanOptionalAction if info.default else "store_true"
        group.add_argument(name, dest=field, action=action, default=info.default, help=help_text)
    elif typing.get_origin(kind) is Literal:
        group.add_argument(name, dest=field, default=info.default, choices=typing.get_args(kind), help=help_text,
                           action=_StoreGiven)
    else:
        metavar = name.lstrip("-").replace("-", "_").upper()
        group.add_argument(name, dest=field, type=kind, default=info.default, metavar=metavar, help=help_text,
                           action=_StoreGiven)


PROMPTS_HELP = (
    "JSONL file, one prompt per line: a row's 'prompt' (the formatted prompt text) is used as is; a row without one "
    "('prompt' absent or null, as in the run's data/{train,dev,test}.jsonl) has its 'instruction' and optional "
    "'input' formatted with --prompt-format; other fields are ignored"
)
"""What ``--prompts`` reads (the ``--help`` of ``rollout`` and ``calibrate``)."""


def _row_prompt(row: Any, where: str, prompt_format: str, tokenizer: Any) -> str:
    if not isinstance(row, dict):
        raise PromptFileError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if prompt is not None:
        raise PromptFileError(f"{where}: field 'prompt' must be a string (the formatted prompt) or null, got "
                              f"{type(prompt).__name__}")
    instruction, input_text = row.get("instruction"), row.get("input")
    if not isinstance(instruction, str) or not instruction.strip() or not isinstance(input_text, str | None):
        raise PromptFileError(
            f"{where}: a row needs a string field 'prompt' (the formatted prompt text) or, without one, a non-empty "
            f"string 'instruction' (and optionally a string 'input'); the row has {sorted(row)}"
        )
    return instruction_prompt(instruction, input_text or "", style=prompt_format, tokenizer=tokenizer)


def read_prompts(path: Path, *, prompt_format: str = "minillm", tokenizer: Any = None) -> list[str]:
    """The prompt of every non-blank line of a JSONL file (:data:`PROMPTS_HELP`): its ``prompt`` field, or else its
    ``instruction`` and ``input`` formatted in ``prompt_format`` (`switch_core.data.prompts.instruction_prompt`).

    Args:
        path: the JSONL file.
        prompt_format: ``data.prompt_format``'s values (minillm, chat_template).
        tokenizer: needed by ``chat_template``.

    Raises:
        PromptFileError: missing or empty file, a line that is not a JSON object, or one with neither a string
            ``prompt`` nor a non-empty string ``instruction`` (the message names the line).
        switch_core.data.prompts.PromptFormatError: ``chat_template`` without a tokenizer that has one.
    """
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} does not exist")
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            prompts.append(_row_prompt(row, f"{path}:{number}", prompt_format, tokenizer))
    if not prompts:
        raise PromptFileError(f"prompts file {path} holds no prompts")
    return prompts


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``rollout`` and ``calibrate``: models, prompts, batching, decoding and schedule."""
    models = parser.add_argument_group("models and prompts")
    models.add_argument("--teacher", required=True, help="checkpoint folder, .gguf file, hub name or 'embedded'")
    models.add_argument("--student", required=True, help="checkpoint folder, .gguf file or hub name")
    models.add_argument("--prompts", required=True, type=Path, help=PROMPTS_HELP)
    add_config_option(models, DataConfig, "prompt_format")
    models.add_argument("--dtype", default="float32", choices=typing.get_args(DtypeName), help="model dtype")
    models.add_argument("--device", default="cpu", help="device of both models, e.g. cpu or cuda:0 (default: cpu)")
    add_config_option(models, OptimConfig, "mixed_precision")
    add_config_option(models, RolloutConfig, "batch_size")
    add_config_option(models, DataConfig, "max_prompt_length")
    models.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    decoding = parser.add_argument_group("decoding")
    for field in ("max_new_tokens", "greedy", "temperature", "top_k", "top_p", "schedule", "decay", "horizon"):
        add_config_option(decoding, RolloutConfig, field)


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the τ0 search (``calibrate``, and ``rollout`` without ``--tau0``)."""
    group = parser.add_argument_group("τ0 calibration")
    for field in ("target_teacher_share", "calibration_tolerance", "calibration_evaluations", "calibration_prompts"):
        add_config_option(group, RolloutConfig, field)


def rollout_config(args: argparse.Namespace) -> RolloutConfig:
    """The ``rollout`` config section of the options (``args.<field>``; the schema's defaults for the others).

    Raises:
        OptionError: an option out of the field's range (names the option and the allowed range).
    """
    values = {name: value for name, value in vars(args).items() if name in RolloutConfig.model_fields}
    try:
        return RolloutConfig(**values)
    except ValidationError as error:
        problems = [f"{option_name(e['loc'][0])} {values[e['loc'][0]]}: {e['msg']}" for e in error.errors()]
        raise OptionError("; ".join(problems)) from None


def load_shared_tokenizer(args: argparse.Namespace) -> PreTrainedTokenizerBase:
    """The teacher's tokenizer (shared with the student, see :func:`load_models`).

    Raises:
        switch_core.models.loading.ModelLoadError: it cannot be loaded.
    """
    from switch_core.models.loading import load_tokenizer

    return load_tokenizer(args.teacher)


def load_models(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Load teacher and student and check that they fit together and with both tokenizers.

    Raises:
        switch_core.models.loading.ModelLoadError: a model or the student's tokenizer cannot be loaded.
        switch_core.models.compat.IncompatibleModelsError: different vocabularies or tokenizers.
    """
    from switch_core.models.compat import check_compatible
    from switch_core.models.loading import load_causal_lm, load_tokenizer

    student_tokenizer = load_tokenizer(args.student)
    teacher = load_causal_lm(args.teacher, dtype=args.dtype, device=args.device)
    student = load_causal_lm(args.student, dtype=args.dtype, device=args.device)
    check_compatible(teacher, student, tokenizer, student_tokenizer)
    return teacher, student


def precision(args: argparse.Namespace) -> AbstractContextManager[None]:
    """The autocast the models run under: ``--mixed-precision`` on ``--device`` (as a training run with that
    ``optim.mixed_precision`` decodes its rollouts; `switch_core.processes.autocast`)."""
    return autocast(args.mixed_precision, args.device)


def settings_from_config(config: RolloutConfig, tokenizer: PreTrainedTokenizerBase) -> RolloutSettings:
    """Rollout settings of the options' config; pad and stop ids from the tokenizer (stop = eos)."""
    return RolloutSettings.from_config(
        config, pad_token_id=int(tokenizer.pad_token_id), stop_token_ids=(int(tokenizer.eos_token_id),)
    )


def tokenized_batches(
    prompts: list[str], tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, source: Path
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Tokenise (``add_special_tokens=True``; a long prompt keeps its format's end, see
    :func:`~switch_core.data.tokenize.encode_prompt`) and batch prompts, longest first, left-padded
    (``args.batch_size`` prompts per batch, validated by :func:`rollout_config`).

    Returns:
        ``(original indices, prompt_ids [B, Lp], prompt_mask [B, Lp])`` per batch.

    Raises:
        OptionError: ``--max-prompt-length`` below 1.
        switch_core.data.tokenize.EmptyExampleError: a prompt is empty after tokenisation (names the line).
    """
    if args.max_prompt_length < 1:
        raise OptionError(f"--max-prompt-length {args.max_prompt_length} must be >= 1")
    ids = [
        tokenize_prompt(text, tokenizer, max_prompt_length=args.max_prompt_length, record_id=f"{source}:{n + 1}")
        for n, text in enumerate(prompts)
    ]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = []
    for start in range(0, len(order), args.batch_size):
        indices = order[start : start + args.batch_size]
        prompt_ids, prompt_mask = left_pad([ids[i] for i in indices], int(tokenizer.pad_token_id))
        batches.append((indices, prompt_ids, prompt_mask))
    return batches


def search_tau0(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    batches: list[tuple[list[int], torch.Tensor, torch.Tensor]],
    settings: RolloutSettings,
    config: RolloutConfig,
    seed: int,
) -> CalibrationResult:
    """The τ0 search on prompt batches (:func:`tokenized_batches`) as ``config`` says; prints each try.

    Raises:
        switch_core.rollout.CalibrationError: see :func:`switch_core.rollout.calibrate_tau0`.
    """
    return calibrate_tau0(
        student, teacher, [(ids, mask) for _, ids, mask in batches], settings, target_share=config.target_teacher_share,
        tolerance=config.calibration_tolerance, max_evaluations=config.calibration_evaluations, seed=seed,
        progress=lambda tau0, share: print(f"tau0 {tau0:.6g}: teacher share {share:.4f}", flush=True),
    )
