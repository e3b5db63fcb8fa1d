"""Experiment tracking behind a small interface, so that switch_core never imports MLflow.

Training and evaluation report parameters, metrics, artifacts and tags through a :class:`Tracker`. switch_core ships
two implementations: :class:`NullTracker` (drops everything) and :class:`JsonlTracker` (one JSON line per event in a
file, readable with ``pandas.read_json(path, lines=True)``). The MLflow implementation lives in the orchestration layer
(``tasks/``), which passes its tracker to the command functions.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from switch_core.config import Config


class TrackerError(ValueError):
    """The tracking backend failed (its store cannot be opened, created or written); the message names the store and
    the fix. A ValueError, so the CLI reports it in one line."""


@runtime_checkable
class Tracker(Protocol):
    """Where a run's parameters, metrics, artifacts and tags go."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Record run parameters (flat ``{"optim.lr": 5e-4, ...}``; values are str/int/float/bool/None)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record metric values at an optimizer step (``step`` >= 0; 0 = before training)."""

    def log_artifact(self, path: str | Path) -> None:
        """Record a file or folder produced by the run."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Attach string tags to the run (git SHA, method, stage...)."""


class NullTracker:
    """A tracker that records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        del params

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        del metrics, step

    def log_artifact(self, path: str | Path) -> None:
        del path

    def set_tags(self, tags: dict[str, str]) -> None:
        del tags


def _json_value(value: Any) -> Any:
    """JSON-safe value: non-finite floats become strings ("nan", "inf"), paths and other objects ``str``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class JsonlTracker:
    """Append one JSON object per event to a file.

    Each line is ``{"time": <unix seconds>, "event": "params" | "metrics" | "artifact" | "tags", ...}`` with
    ``params`` / ``metrics`` + ``step`` / ``path`` / ``tags``. The file is opened in append mode for each event and
    flushed, so a killed run keeps every event written so far and a resumed run continues the same file.

    Args:
        path: the JSONL file; parent folders are created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, event: str, **fields: Any) -> None:
        row = {"time": round(time.time(), 3), "event": event, **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._write("params", params={str(k): _json_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._write("metrics", step=int(step), metrics={str(k): _json_value(float(v)) for k, v in metrics.items()})

    def log_artifact(self, path: str | Path) -> None:
        self._write("artifact", path=str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write("tags", tags={str(k): str(v) for k, v in tags.items()})


def read_jsonl_events(path: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """Read the events a :class:`JsonlTracker` wrote, optionally only those of one kind.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not JSON (the message names the line number).
    """
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None
        if event is None or row.get("event") == event:
            rows.append(row)
    return rows


def tracker_from_config(
    config: Config, jsonl_path: str | Path, *, name: str, project_root: str | Path | None = None
) -> Tracker:
    """The tracker of a stage for ``config.tracking.backend``.

    ``none`` gives a :class:`NullTracker`, ``jsonl`` a :class:`JsonlTracker` at ``jsonl_path``; any other backend is
    a plugin registered under the entry-point group ``switch_kd.trackers`` (``mlflow`` is
    ``tasks.mlflow_tracking:MlflowTracker``), called as ``plugin(config, name=..., project_root=..., jsonl_path=...)``,
    so switch_core never imports MLflow.

    Raises:
        ValueError: no plugin is registered for the backend (reinstall the project: ``make install``).
        TrackerError: the plugin's store failed.
    """
    backend = config.tracking.backend
    if backend == "none":
        return NullTracker()
    if backend == "jsonl":
        return JsonlTracker(jsonl_path)
    plugins = {ep.name: ep for ep in entry_points(group="switch_kd.trackers")}
    if backend not in plugins:
        raise ValueError(
            f"tracking.backend = {backend!r} has no registered tracker plugin (found: {sorted(plugins) or 'none'}); "
            "reinstall the project (make install) or set tracking.backend to jsonl"
        )
    return plugins[backend].load()(config, name=name, project_root=project_root, jsonl_path=jsonl_path)


@contextmanager
def closing_tracker(tracker: Tracker) -> Iterator[Tracker]:
    """End the tracker's run on exit, marked failed when the block raised, if the tracker has a run to end
    (plugins such as MLflow's have ``close(failed=...)``); the built-in trackers need no closing."""
    close = getattr(tracker, "close", None)
    try:
        yield tracker
    except BaseException:
        if callable(close):
            close(failed=True)
        raise
    if callable(close):
        close(failed=False)
