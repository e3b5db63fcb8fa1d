"""Training progress on the console: a tqdm bar on a terminal, a plain-text line every N steps otherwise.

The bar shows loss, teacher share (SWITCH rollouts), tokens/s and tqdm's ETA; the plain line (for log files, CI,
DVC) shows the same plus the step count and an ETA computed from the mean step time of this process.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


class Progress:
    """Progress reporting of one training run (create it on the main process only).

    Args:
        name: run name shown in the bar / lines.
        total_steps: optimizer steps of the run.
        start_step: steps already done (resumed runs).
        log_every: plain-text line period in steps (ignored on a terminal).
        stream: where to write (default ``sys.stderr``); a terminal gets the bar.
    """

    def __init__(
        self, name: str, total_steps: int, start_step: int, log_every: int, stream: TextIO | None = None
    ) -> None:
        self.name, self.total, self.log_every = name, total_steps, log_every
        self.stream = stream or sys.stderr
        self.began, self.start_step = time.perf_counter(), start_step
        self.bar = None
        if self.stream.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, desc=name, file=self.stream, dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_second: float, teacher_share: float | None) -> None:
        """Report optimizer step ``step`` (1-based count of steps done)."""
        fields = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_second:,.0f}"}
        if teacher_share is not None and math.isfinite(teacher_share):
            fields["share"] = f"{teacher_share:.2f}"
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        if step % self.log_every and step != self.total:
            return
        done = step - self.start_step
        eta = (time.perf_counter() - self.began) / done * (self.total - step) if done else math.inf
        text = " | ".join(f"{k} {v}" for k, v in fields.items())
        print(f"[{self.name}] step {step}/{self.total} | {text} | eta {_format_seconds(eta)}", file=self.stream,
              flush=True)

    def message(self, text: str) -> None:
        """A line that does not disturb the bar (dev results, checkpoints)."""
        if self.bar is not None:
            self.bar.write(f"[{self.name}] {text}", file=self.stream)
        else:
            print(f"[{self.name}] {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
