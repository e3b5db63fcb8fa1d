"""Where each pipeline stage writes its outputs inside ``run_dir``: the one place that knows the layout.

The DVC pipeline (dvc.yaml), the Prefect tasks and the CLI commands all derive their paths from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from switch_core.config import Config


@dataclass(frozen=True)
class RunLayout:
    """Paths of a run's stage outputs. ``root`` is the absolute run directory."""

    root: Path

    @classmethod
    def from_config(cls, config: Config, project_root: Path) -> RunLayout:
        """Resolve ``config.run_dir`` against the project root."""
        root = Path(config.run_dir)
        return cls(root if root.is_absolute() else (project_root / root).resolve())

    # data stage
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """A split file written by ``prepare-data``: train, dev or test."""
        return self.data_dir / f"{name}.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data_dir / "data_report.json"

    # models
    def model(self, name: str) -> Path:
        """A model checkpoint folder: teacher-base, teacher, student-init, student-sft or a run name."""
        return self.root / "models" / name

    def state(self, name: str) -> Path:
        """Resumable training state of a training run."""
        return self.root / "state" / name

    @property
    def seqkd_data(self) -> Path:
        return self.root / "seqkd" / "train.jsonl"

    @property
    def seqkd_meta(self) -> Path:
        """The SeqKD data's inputs fingerprint, sizes and generation rate (``seqkd-data``)."""
        return self.root / "seqkd" / "meta.json"

    # analysis
    @property
    def gate_profile(self) -> Path:
        """The warmed-up student's JSD to the teacher by response position (``gate-profile``)."""
        return self.root / "analysis" / "gate_profile.json"

    # evaluation and report
    def eval_dir(self, model_name: str) -> Path:
        return self.root / "eval" / model_name

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    # timings: what differs between re-runs of the same inputs (seconds, rates, dates), kept out of tracked outputs
    def timings(self, output: Path) -> Path:
        """The timings folder of a stage output folder under ``root``: the same path under ``timings/``
        (``eval/kd`` -> ``timings/eval/kd``). Training runs keep theirs in ``state/<name>/timings.json``.

        Raises:
            ValueError: ``output`` is not under ``root``.
        """
        return self.root / "timings" / Path(output).resolve().relative_to(self.root.resolve())
