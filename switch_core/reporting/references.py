"""The reference rows of every results table (teacher, untrained and warmed-up student) and the paper's figures the
documents compare against."""
from __future__ import annotations

from collections.abc import Iterable

REFERENCE_MODELS: tuple[str, ...] = ("teacher", "student-init", "student-sft")
"""Reference rows: the teacher, the untrained (pruned) student and the warmed-up student."""
REFERENCE_LABELS = {"teacher": "teacher (reference)", "student-init": "student-init (untrained student)",
                    "student-sft": "student-sft (warmed-up student)"}
TRAINED_STAGES: tuple[tuple[str, str], ...] = (("teacher", "teacher SFT"), ("student-sft", "student warm-up"))
"""The reference models a run may train, with the name of their training stage."""
PAPER_TEACHER_SHARE = 0.53
"""Teacher share of SWITCH rollouts at the paper's best decay 1/10 (docs/METHOD.md §1.1 item 4, secondary source)."""
PAPER_DOLLY_TRAIN = 14_000
"""Training examples of the paper's Dolly split (~14k of databricks-dolly-15k; docs/METHOD.md §5.1)."""
PAPER_MAX_NEW_TOKENS = 256
"""Response tokens at evaluation in the protocol (docs/METHOD.md §5.3)."""
PAPER_DOLLY_NUMBERS = (26.2, 24.9)
"""The only paper numbers found: SWITCH vs an unnamed baseline, Dolly ROUGE-L (docs/METHOD.md §3, secondary source)."""
PAPER_BENCHMARKS: dict[str, str] = {"dolly": "Dolly", "self-inst": "SelfInst", "vicuna": "Vicuna", "sinst": "S-NI",
                                    "uinst": "UnNI"}
"""The paper's five evaluation sets, by benchmark name (docs/METHOD.md §5.1)."""


def model_label(model: str) -> str:
    """A model's row label: reference rows say what they are (``"teacher (reference)"``), others keep their name."""
    return REFERENCE_LABELS.get(model, model)


def references_first(models: Iterable[str]) -> list[str]:
    """``models`` with the reference rows first (in :data:`REFERENCE_MODELS` order), then the others in input order."""
    names = list(dict.fromkeys(models))
    return [m for m in REFERENCE_MODELS if m in names] + [m for m in names if m not in REFERENCE_MODELS]
