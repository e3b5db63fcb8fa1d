"""Teacher/student compatibility check, run before any distillation.

Every KD loss here (docs/METHOD.md) compares the teacher's and the student's next-token distributions id by id, and the
student's tokens are scored by the teacher as its own ids. That is only meaningful when both models share one
tokenizer (identical token -> id mapping, same eos) and produce logits of the same width. Otherwise the failure is
a cryptic broadcast error (vocab sizes differ inside one family, e.g. Qwen2.5-0.5B 151,936 vs 7B 152,064) or,
worse, silently wrong training (different tokenizers): docs/METHOD.md §A.3.

Sizes are compared on ``config.vocab_size`` and the output embedding rows, not on ``len(tokenizer)``: a config
vocabulary larger than the tokenizer (padding rows, as in Qwen) is fine when teacher and student agree.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

_MAX_EXAMPLES = 3
_NO_CROSS = "Cross-tokenizer distillation is not supported."


class IncompatibleModelsError(ValueError):
    """Teacher and student cannot be distilled together (different vocabularies or tokenizers)."""


def _output_rows(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def _size_problems(teacher: PreTrainedModel, student: PreTrainedModel) -> list[str]:
    problems = []
    for name, model in (("teacher", teacher), ("student", student)):
        rows, size = _output_rows(model), int(model.config.vocab_size)
        if rows != size:
            problems.append(f"the {name}'s output embedding has {rows} rows but its config.vocab_size is {size}")
    for what, t_size, s_size in (
        ("config.vocab_size", int(teacher.config.vocab_size), int(student.config.vocab_size)),
        ("output embedding size", _output_rows(teacher), _output_rows(student)),
    ):
        if t_size != s_size:
            more = "student" if s_size > t_size else "teacher"
            problems.append(
                f"{what} differs: teacher {t_size}, student {s_size} (the {more} has {abs(s_size - t_size)} more)"
            )
    if problems:
        problems.append(
            f"Fix: resize the student's embeddings to the teacher's size (student.resize_token_embeddings("
            f"{int(teacher.config.vocab_size)})) when both use the same tokenizer and only padding rows differ, "
            f"or pick a student of the teacher's family with the same vocabulary. {_NO_CROSS}"
        )
    return problems


def _mapping_problems(
    teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    problems = []
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab:
        only_t = sorted(set(t_vocab) - set(s_vocab))
        only_s = sorted(set(s_vocab) - set(t_vocab))
        moved = sorted(tok for tok in set(t_vocab) & set(s_vocab) if t_vocab[tok] != s_vocab[tok])
        detail = [f"tokenizer sizes: teacher {len(t_vocab)}, student {len(s_vocab)}"]
        if only_t:
            detail.append(f"{len(only_t)} tokens only in the teacher's (e.g. {only_t[:_MAX_EXAMPLES]})")
        if only_s:
            detail.append(f"{len(only_s)} tokens only in the student's (e.g. {only_s[:_MAX_EXAMPLES]})")
        if moved:
            examples = [f"{tok!r}: teacher {t_vocab[tok]}, student {s_vocab[tok]}" for tok in moved[:_MAX_EXAMPLES]]
            detail.append(f"{len(moved)} tokens with different ids (e.g. {'; '.join(examples)})")
        problems.append("the tokenizers' token -> id mappings differ: " + ", ".join(detail))
    if teacher_tokenizer.eos_token_id != student_tokenizer.eos_token_id:
        problems.append(
            f"eos ids differ: teacher {teacher_tokenizer.eos_token_id} ({teacher_tokenizer.eos_token!r}), "
            f"student {student_tokenizer.eos_token_id} ({student_tokenizer.eos_token!r})"
        )
    if problems:
        problems.append(f"Fix: use one tokenizer for both, i.e. a student of the teacher's family. {_NO_CROSS}")
    return problems


def _fit_problems(
    tokenizers: list[tuple[str, PreTrainedTokenizerBase]], models: list[tuple[str, PreTrainedModel]]
) -> list[str]:
    problems = []
    for t_name, tokenizer in tokenizers:
        needed = max(tokenizer.get_vocab().values()) + 1
        for m_name, model in models:
            rows = _output_rows(model)
            if needed > rows:
                problems.append(
                    f"the {t_name} tokenizer has ids up to {needed - 1} but the {m_name}'s output has only {rows} "
                    f"rows ({needed - rows} too few): resize its embeddings with resize_token_embeddings({needed})"
                )
    return problems


def check_compatible(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise unless teacher and student can be distilled together.

    Checks: equal ``config.vocab_size`` and output embedding size (each model's head matching its config); when
    both tokenizers are given, identical token -> id mappings and eos ids; every given tokenizer's ids fit both
    models' outputs.

    Args:
        teacher: the teacher causal LM.
        student: the student causal LM.
        teacher_tokenizer: the teacher's tokenizer, or None.
        student_tokenizer: the student's tokenizer, or None (with one tokenizer only the fit is checked).

    Raises:
        IncompatibleModelsError: listing every mismatch with both sizes and the difference, and what to do.
    """
    problems = _size_problems(teacher, student)
    if teacher_tokenizer is not None and student_tokenizer is not None:
        problems += _mapping_problems(teacher_tokenizer, student_tokenizer)
    given = [(n, t) for n, t in (("teacher's", teacher_tokenizer), ("student's", student_tokenizer)) if t is not None]
    if len(given) == 2 and given[0][1].get_vocab() == given[1][1].get_vocab():
        given = [("shared", teacher_tokenizer)]
    problems += _fit_problems(given, [("teacher", teacher), ("student", student)])
    if problems:
        raise IncompatibleModelsError(
            "teacher and student are incompatible for distillation:\n- " + "\n- ".join(problems)
        )
