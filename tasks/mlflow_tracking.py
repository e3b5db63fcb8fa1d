"""MLflow for switch-kd: where the store is, the :class:`MlflowTracker` plugin, and the run handles the flows use.

Store: a sqlite database at a fixed absolute path in the project folder (``sqlite:////<project>/mlflow.db``) and an
explicit artifact location (``<project>/mlartifacts``), so DVC experiment workspaces, Prefect workers and CLI
subprocesses all write to the same place; ``MLFLOW_TRACKING_URI`` (then ``tracking.mlflow_uri``) overrides it, e.g.
with a tracking server. Checkpoints are logged by reference (a JSON file naming the folder and its files), never
copied: DVC owns their bytes. A new sqlite store is created and migrated by one process at a time (an exclusive lock
on ``<store>.lock``, see :func:`store_client`), so stages and flows may start together on a fresh clone; any store
failure of the tracker is a :class:`~switch_core.tracking.TrackerError` (the CLI's one-line error).
The experiment carries ``mlflow.experimentKind = custom_model_development``, so the MLflow UI opens on its runs
rather than on the (empty) GenAI overview.

Linking runs across processes (environment variables, set by the Prefect tasks for the stage subprocess):

- ``SWITCHKD_MLFLOW_RUN_ID``: attach to this existing run instead of creating one (the task created it);
- ``SWITCHKD_MLFLOW_PARENT_RUN_ID``: create the run as a child of this one (nested runs of an ablation; also usable
  around a plain ``dvc exp run``);
- ``SWITCHKD_PREFECT_FLOW_RUN_ID`` and ``SWITCHKD_PRESET``: tags (params.yaml no longer names the preset once it is
  materialised, see :mod:`tasks.params`).

Every run is tagged with the git commit (``mlflow.source.git.commit``), the DVC stage (``DVC_STAGE``, set by DVC for
stage commands), the Prefect flow-run id when there is one, the preset and, where it applies, the method.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from alembic.util import CommandError
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from switch_core.config import Config, flatten
from switch_core.tracking import JsonlTracker, TrackerError, read_jsonl_events

ENV_RUN_ID = "SWITCHKD_MLFLOW_RUN_ID"
ENV_PARENT_RUN_ID = "SWITCHKD_MLFLOW_PARENT_RUN_ID"
ENV_FLOW_RUN_ID = "SWITCHKD_PREFECT_FLOW_RUN_ID"
ENV_PRESET = "SWITCHKD_PRESET"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
COPY_LIMIT_BYTES = 20 * 2**20
"""Files and folders up to this size are copied into the artifact store; larger ones are logged by reference."""
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"})
"""A folder holding one of these is a checkpoint: always logged by reference."""
MAX_PARAM_CHARS = 6000
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's experiment kind for model training (the UI's other kind, ``genai_development``, opens on traces)."""
STORE_ERRORS = (MlflowException, SQLAlchemyError, CommandError, OSError)
"""What a failing store raises (MLflow, SQLAlchemy, alembic migrations, the file system)."""
_BATCH = 100


def project_root_of(path: str | Path | None = None) -> Path:
    """The project folder: ``path``, else ``DVC_ROOT`` (set by DVC for stage commands), else the working directory."""
    return Path(path or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(project_root: str | Path, configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``configured`` (``tracking.mlflow_uri``), else the project's sqlite store
    ``sqlite:////<abs project>/mlflow.db``."""
    default = f"sqlite:///{Path(project_root).resolve() / STORE_FILE}"
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths against the working directory); None for other
    stores and in-memory databases."""
    try:
        url = make_url(uri)
    except ArgumentError:  # not an SQLAlchemy URL: a server, file store, databricks...
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve()


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn a store failure (see :data:`STORE_ERRORS`) into a :class:`~switch_core.tracking.TrackerError` naming the
    store and the fix, so the CLI prints one line instead of a traceback."""
    try:
        yield
    except FileNotFoundError:  # a missing artifact is the caller's error, not the store's
        raise
    except STORE_ERRORS as err:
        text = str(getattr(err, "message", None) or err).strip().splitlines()
        raise TrackerError(
            f"MLflow store {uri} failed: {text[0] if text else type(err).__name__} (check that the store is "
            "reachable and is an MLflow store, or choose another with MLFLOW_TRACKING_URI / tracking.mlflow_uri, "
            "or set tracking.backend=jsonl)"
        ) from err


def store_client(uri: str) -> MlflowClient:
    """An MLflow client on ``uri``. A sqlite store is opened (created and migrated when new or old) while holding an
    exclusive lock on ``<database>.lock``, so that processes starting together do not race on its schema (MLflow
    alone fails with ``table experiments already exists`` or an alembic error).

    Raises:
        TrackerError: the store cannot be opened, created or migrated.
    """
    with store_errors(uri):
        database = sqlite_file(uri)
        if database is None:
            return MlflowClient(uri)
        database.parent.mkdir(parents=True, exist_ok=True)
        with database.with_name(database.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            return MlflowClient(uri)


def artifact_location(project_root: str | Path) -> str:
    """``file://`` URI of the project's artifact folder (``<project>/mlartifacts``)."""
    return (Path(project_root).resolve() / ARTIFACTS_DIR).as_uri()


def experiment_id(client: MlflowClient, name: str, project_root: str | Path) -> str:
    """The id of experiment ``name``, created with the project's artifact location if it does not exist, and marked
    as a model-training experiment (:data:`EXPERIMENT_KIND`) unless it already has a kind."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(
                name, artifact_location=f"{artifact_location(project_root)}/{name}",
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:  # a store made before the tag was set
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def git_tags(project_root: str | Path) -> dict[str, str]:
    """``mlflow.source.git.commit`` and ``git.dirty`` of the project's repository; empty outside a git repository."""
    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def prefect_flow_run_id() -> str | None:
    """The Prefect flow-run id: ``SWITCHKD_PREFECT_FLOW_RUN_ID``, else the current flow run if inside one."""
    if os.environ.get(ENV_FLOW_RUN_ID):
        return os.environ[ENV_FLOW_RUN_ID]
    try:
        from prefect.runtime import flow_run
    except ImportError:  # prefect is optional for the CLI plugin
        return None
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def standard_tags(project_root: str | Path, *, stage: str | None = None, preset: str | None = None) -> dict[str, str]:
    """Tags every switch-kd run carries: git commit, DVC stage, Prefect flow-run id, preset (those that are known)."""
    tags = git_tags(project_root)
    stage = stage or os.environ.get("DVC_STAGE")
    if stage:
        tags["dvc.stage"] = stage
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    preset = preset or os.environ.get(ENV_PRESET)
    if preset:
        tags["preset"] = preset
    return tags


def config_params(config: Config, run_name: str | None = None) -> dict[str, Any]:
    """Flattened parameters of a stage: the configuration without ``runs``/``methods``, plus the run's method fields
    (``method.*``), ``method`` and ``init_from`` when the stage belongs to run ``run_name``.

    Raises:
        ConfigError: unknown run or overrides that do not validate.
    """
    cfg = config.run_config(run_name) if run_name else config
    params = flatten(cfg.model_dump(exclude={"runs", "methods"}))
    if run_name:
        run = cfg.runs[run_name]
        params.update({f"method.{k}": v for k, v in cfg.method_config(run_name).model_dump().items()})
        params.update({"method": run.method, "init_from": run.init_from})
        params.update({f"overrides.{k}": v for k, v in flatten(run.overrides).items()})
    return params


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_CHARS]


def _chunks(items: list[Any], size: int = _BATCH) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class MlflowRun:
    """A handle on one MLflow run: batched logging, artifacts copied or logged by reference.

    Args:
        client: the MLflow client.
        run_id: the run.
        owned: whether :meth:`end` terminates the run (False for a run another process created).
    """

    def __init__(self, client: MlflowClient, run_id: str, *, owned: bool) -> None:
        self.client, self.run_id, self.owned = client, run_id, owned
        self._params: dict[str, str] = dict(client.get_run(run_id).data.params)

    @classmethod
    def start(
        cls,
        project_root: str | Path,
        *,
        experiment: str,
        name: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        uri: str | None = None,
    ) -> MlflowRun:
        """Create a run (a child of ``parent_run_id`` when given) in ``experiment`` of the project's store."""
        client = store_client(tracking_uri(project_root, uri))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, experiment, project_root), run_name=name, tags=all_tags)
        return cls(client, run.info.run_id, owned=True)

    @classmethod
    def attach(cls, project_root: str | Path, run_id: str, *, uri: str | None = None) -> MlflowRun:
        """Log into an existing run created elsewhere (not terminated by :meth:`end`)."""
        return cls(store_client(tracking_uri(project_root, uri)), run_id, owned=False)

    def log_params(self, params: dict[str, Any], *, skip_existing: bool = False) -> None:
        """Log parameters (values as text, at most 6000 characters).

        Args:
            params: flat ``{"optim.lr": 5e-4}``.
            skip_existing: leave out keys this run already has (whatever their value) instead of failing on a
                changed value (MLflow parameters are immutable).

        Raises:
            ValueError: a key already logged with another value (and ``skip_existing`` is False).
        """
        new: dict[str, str] = {}
        for key, value in params.items():
            text = _param_text(value)
            old = self._params.get(str(key))
            if old is None:
                new[str(key)] = text
            elif old != text and not skip_existing:
                raise ValueError(
                    f"MLflow run {self.run_id}: parameter {key!r} is {old!r}, cannot change it to {text!r}"
                )
        for chunk in _chunks(list(new.items())):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
        self._params.update(new)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float | None = None) -> None:
        """Log metric values at ``step`` (``timestamp`` in Unix seconds, default now); non-finite values are kept."""
        millis = int((timestamp if timestamp is not None else time.time()) * 1000)
        rows = [Metric(str(k), float(v), millis, int(step)) for k, v in metrics.items()]
        for chunk in _chunks(rows, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set string tags."""
        rows = [RunTag(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in tags.items()]
        for chunk in _chunks(rows):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_reference(self, path: str | Path, *, md5: str | None = None) -> None:
        """Record a file or folder by reference: ``references/<name>.json`` (absolute path, files, sizes, DVC md5
        when known) and the tag ``ref.<name>`` = absolute path. Nothing is copied."""
        path = Path(path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        record = {
            "path": str(path), "kind": "folder" if path.is_dir() else "file",
            "files": [{"name": p.relative_to(path).as_posix() if path.is_dir() else p.name, "bytes": p.stat().st_size}
                      for p in files if p.exists()],
            "dvc_md5": md5,
        }
        record["total_bytes"] = sum(f["bytes"] for f in record["files"])
        self.client.log_dict(self.run_id, record, f"references/{path.name}.json")
        self.set_tags({f"ref.{path.name}": str(path)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a small file or folder into the run's artifacts; checkpoints and large ones go by reference.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"cannot log artifact {path}: it does not exist")
        if path.is_dir():
            is_checkpoint = any(p.suffix in WEIGHT_SUFFIXES for p in path.rglob("*"))
            if is_checkpoint or _folder_size(path) > COPY_LIMIT_BYTES:
                self.log_reference(path)
            else:
                self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        elif path.stat().st_size > COPY_LIMIT_BYTES or path.suffix in WEIGHT_SUFFIXES:
            self.log_reference(path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_config(self, config: Config, params_file: str | Path | None, run_name: str | None = None) -> None:
        """Log the stage's flattened configuration (keys the stage itself logged win) and, as artifacts, the params
        file and the resolved configuration (``config/resolved.yaml``)."""
        self.log_params(config_params(config, run_name), skip_existing=True)
        if params_file is not None and Path(params_file).is_file():
            self.client.log_artifact(self.run_id, str(params_file), "config")
        self.client.log_text(
            self.run_id, yaml.safe_dump(config.model_dump(), sort_keys=False), "config/resolved.yaml"
        )

    def metric_keys(self) -> set[str]:
        """Names of the metrics this run has so far."""
        return set(self.client.get_run(self.run_id).data.metrics)

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run (``FINISHED``, ``FAILED`` or ``KILLED``) if this handle created it."""
        if self.owned:
            self.client.set_terminated(self.run_id, status)


def replay_jsonl(run: MlflowRun, path: str | Path, since: float = 0.0) -> int:
    """Log the events of a :class:`~switch_core.tracking.JsonlTracker` file written at or after ``since`` (Unix
    seconds) into ``run``; return how many were logged. Parameters already on the run are kept."""
    count = 0
    for event in read_jsonl_events(path):
        if float(event.get("time", 0.0)) < since:
            continue
        kind = event.get("event")
        if kind == "params":
            run.log_params(event["params"], skip_existing=True)
        elif kind == "metrics":
            values = {k: float(v) for k, v in event["metrics"].items()}
            run.log_metrics(values, step=int(event["step"]), timestamp=float(event["time"]))
        elif kind == "tags":
            run.set_tags(event["tags"])
        elif kind == "artifact" and Path(event["path"]).exists():
            run.log_artifact(event["path"])
        else:
            continue
        count += 1
    return count


class MlflowTracker:
    """The ``mlflow`` tracker backend (entry point ``switch_kd.trackers: mlflow``), implementing
    :class:`switch_core.tracking.Tracker`.

    One MLflow run per stage execution: it attaches to ``SWITCHKD_MLFLOW_RUN_ID`` when set (a Prefect task created the
    run), else creates a run named ``name`` (a child of ``SWITCHKD_MLFLOW_PARENT_RUN_ID`` when set) with the standard
    tags (:func:`standard_tags`). A store failure raises :class:`~switch_core.tracking.TrackerError` (a ValueError:
    the CLI's one-line error). Every event is also appended to ``jsonl_path`` when given, so the report finds the
    training logs whatever the backend. :meth:`close` logs the resolved configuration (the keys the stage logged
    itself win), the params file as an artifact, and ends a run it created.

    Args:
        config: the stage's resolved configuration (``tracking.experiment``, ``tracking.mlflow_uri`` are used).
        name: run name (``teacher``, ``student-sft``, a run name, ...).
        project_root: the project folder (default :func:`project_root_of`).
        jsonl_path: also write the JSONL event log here.
        run_name: the ``runs`` entry this stage trains or evaluates, if any (adds ``method.*`` params).
    """

    def __init__(
        self,
        config: Config,
        *,
        name: str,
        project_root: str | Path | None = None,
        jsonl_path: str | Path | None = None,
        run_name: str | None = None,
    ) -> None:
        self.config, self.run_name = config, run_name
        self.root = project_root_of(project_root)
        uri = config.tracking.mlflow_uri
        self.store = tracking_uri(self.root, uri)
        with store_errors(self.store):
            if os.environ.get(ENV_RUN_ID):
                self.run = MlflowRun.attach(self.root, os.environ[ENV_RUN_ID], uri=uri)
            else:
                self.run = MlflowRun.start(
                    self.root, experiment=config.tracking.experiment, name=os.environ.get("DVC_STAGE") or name,
                    tags=standard_tags(self.root, preset=config.preset),
                    parent_run_id=os.environ.get(ENV_PARENT_RUN_ID), uri=uri,
                )
        self.jsonl = JsonlTracker(jsonl_path) if jsonl_path else None
        self.closed = False

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self.run.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Record run parameters (immutable in MLflow: re-logging a key with another value raises ValueError)."""
        if self.jsonl:
            self.jsonl.log_params(params)
        with store_errors(self.store):
            self.run.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record metric values at an optimizer step."""
        if self.jsonl:
            self.jsonl.log_metrics(metrics, step)
        with store_errors(self.store):
            self.run.log_metrics({k: float(v) for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path) -> None:
        """Record a file or folder: copied when small, by reference when a checkpoint or large."""
        if self.jsonl:
            self.jsonl.log_artifact(path)
        with store_errors(self.store):
            self.run.log_artifact(path)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Attach string tags."""
        if self.jsonl:
            self.jsonl.set_tags(tags)
        with store_errors(self.store):
            self.run.set_tags(tags)

    def close(self, failed: bool = False) -> None:
        """Log the configuration and end the run if this tracker created it (status ``FAILED`` when ``failed``).
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.run.owned:
            with store_errors(self.store):
                self.run.log_config(self.config, self.root / "params.yaml", self.run_name)
                self.run.end("FAILED" if failed else "FINISHED")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)

