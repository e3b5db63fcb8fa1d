"""Tracker plumbing: plugin lookup by entry point and closing a tracker's run."""
from __future__ import annotations

import pytest

from switch_core.config import Config, TrackingConfig
from switch_core.tracking import NullTracker, closing_tracker, tracker_from_config


class _RunTracker(NullTracker):
    def __init__(self) -> None:
        self.closed: list[bool] = []

    def close(self, failed: bool = False) -> None:
        self.closed.append(failed)


def test_closing_tracker_marks_success_and_failure():
    ok, bad = _RunTracker(), _RunTracker()
    with closing_tracker(ok):
        pass
    with pytest.raises(RuntimeError), closing_tracker(bad):
        raise RuntimeError("training died")
    assert ok.closed == [False] and bad.closed == [True]
    with closing_tracker(NullTracker()):  # no close(): nothing to do
        pass


def test_mlflow_backend_resolves_through_the_entry_point(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = Config(tracking=TrackingConfig(backend="mlflow", experiment="plugin-test"))
    tracker = tracker_from_config(config, tmp_path / "metrics.jsonl", name="kd", project_root=tmp_path)
    assert type(tracker).__module__ == "tasks.mlflow_tracking"
    with closing_tracker(tracker):
        tracker.log_metrics({"train/loss": 1.5}, step=1)
