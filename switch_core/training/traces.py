"""The rollout trace of a run: one JSON line per optimizer step with the teacher share at each response position over
the rows of every process (the teacher-share-by-position diagnostic of docs/METHOD.md §1.3), in ``state/<run>/``.

A resumed run continues the trace from its saved step: :func:`truncate_traces` drops the lines of steps done after
that state was saved (the killed process wrote them, the resumed one writes them again), so the file holds one line
per step. :func:`read_traces` also keeps one line per step (the last), for files written before that rule.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from switch_core.atomic import atomic_write_jsonl

TRACE_FILE = "rollout_traces.jsonl"
"""Per-step teacher share by response position of the run's rollouts, in ``state/<run>/`` (read by the report)."""


def append_trace(state_dir: Path, step: int, teacher_at: list[int], tokens_at: list[int]) -> None:
    """Append step ``step``'s line to ``state_dir / TRACE_FILE``.

    Args:
        state_dir: ``state/<run>`` (created if missing).
        step: 1-based optimizer step the rollout belongs to.
        teacher_at: teacher-chosen tokens at each 0-based response position.
        tokens_at: response tokens at each position (same length).
    """
    row = {
        "step": step, "count_by_position": tokens_at,
        "teacher_share_by_position": [t / n if n else None for t, n in zip(teacher_at, tokens_at, strict=True)],
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / TRACE_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def sum_by_position(parts: list[tuple[list[int], list[int]] | None]) -> tuple[list[int], list[int]] | None:
    """The per-position ``(teacher_tokens, tokens)`` counts of several processes added up position by position (a
    shorter list counts 0 beyond its end); None parts (no rollout) are skipped, None when all are.

    Args:
        parts: one ``(teacher_at, tokens_at)`` (equal lengths) or None per process.
    """
    given = [part for part in parts if part is not None]
    if not given:
        return None
    width = max(len(tokens) for _, tokens in given)
    teacher_at, tokens_at = [0] * width, [0] * width
    for teacher, tokens in given:
        for position, (t, n) in enumerate(zip(teacher, tokens, strict=True)):
            teacher_at[position] += t
            tokens_at[position] += n
    return teacher_at, tokens_at


def read_traces(path: Path) -> list[dict[str, Any]]:
    """The trace lines of ``path`` in step order, one per step: when a step appears several times (a trace written
    across a kill before :func:`truncate_traces` existed) the last line wins. A missing file gives ``[]``; a torn
    last line (a kill while appending) is skipped.

    Raises:
        ValueError: a line other than the last is not JSON, or has no integer ``step``.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
        step = row.get("step") if isinstance(row, dict) else None
        if type(step) is not int:
            raise ValueError(f"{path}:{number}: a trace line needs an integer 'step'")
        by_step[step] = row
    return [by_step[step] for step in sorted(by_step)]


def truncate_traces(state_dir: Path, step: int) -> None:
    """Keep the trace lines of steps ``<= step`` (the resumed state's step), one per step, rewritten atomically;
    nothing to do without a trace file."""
    path = state_dir / TRACE_FILE
    if path.is_file():
        atomic_write_jsonl(path, [row for row in read_traces(path) if row["step"] <= step])
