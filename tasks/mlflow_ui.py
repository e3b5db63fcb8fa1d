"""Serve the MLflow UI on a store and look at it in headless Chromium: the compare view of an ablation's cells.

Used by the browser test and to make the README screenshot::

    python -m tasks.mlflow_ui --store sqlite:////abs/project/mlflow.db --study abl-strategies \
        --out docs/ablations/strategies_compare.png

The UI runs as ``mlflow ui --workers 1`` on 127.0.0.1 (a free port) with job execution off, and is stopped on exit.
Chromium is Debian's ``chromium`` with the flags that work on closed networks (no background networking).

Assistant panel: MLflow 3.17 opens its "MLflow Assistant" beside every page for a browser on the server's own host
(the assistant serves loopback clients only) and a fresh browser profile, so it covers a quarter of the screenshot.
``--host`` with a non-loopback address of this machine (``hostname -I``) serves the UI there, where the panel is not
offered; the UI is then reachable from the network for as long as the screenshot takes.

Landing page: MLflow 3.17's UI opens an experiment on its GenAI overview (traces, latency, token usage: empty for this
project) unless its sidebar switch is on "Model training" (the browser remembers the choice) or the URL carries
``workflowType=machine_learning``; :func:`experiment_url` gives that URL. The experiment's ``mlflow.experimentKind``
tag (set by :func:`tasks.mlflow_tracking.experiment_id`) is MLflow's marker of the experiment kind, but this UI
version chooses the page from the switch alone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from switch_core.tracking import TrackerError
from tasks.dvc_stages import TELEMETRY_OFF
from tasks.mlflow_tracking import store_client

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]


LOOPBACK = "127.0.0.1"
"""Where the UI is served by default."""


class UiError(RuntimeError):
    """The MLflow UI did not start, Chromium is missing or failed, or the store holds no ablation."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def mlflow_ui(store_uri: str, *, host: str = LOOPBACK, timeout: float = 120.0, log: Path | None = None
              ) -> Iterator[str]:
    """Run ``mlflow ui`` on ``store_uri`` (on ``host``, a free port, one worker); yield its base URL; stop it on exit.

    Another ``host`` than 127.0.0.1 is added to the UI's allowed hosts and CORS origins (MLflow refuses requests
    from other hosts and origins by default).

    Raises:
        UiError: it did not answer ``/health`` within ``timeout`` seconds (the message holds its log tail).
    """
    port = free_port()
    base = f"http://{host}:{port}"
    env = dict(os.environ) | TELEMETRY_OFF | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    access = [] if host == LOOPBACK else ["--allowed-hosts", f"{host},{host}:{port}", "--cors-allowed-origins", base]
    log_path = log or Path(tempfile.mkstemp(prefix="mlflow-ui-", suffix=".log")[1])
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri, "--host", host,
             "--port", str(port), "--workers", "1", *access],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise UiError(f"mlflow ui on {store_uri} did not become healthy at {base}:\n{tail}")
            time.sleep(1)
        yield base
    finally:
        _stop(proc)


def experiment_url(base: str, experiment_id: str) -> str:
    """URL of an experiment in the UI at ``base``, opening on its runs table (the "Model training" view) rather than
    the GenAI overview."""
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """URL of the UI's compare view of ``run_ids``."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{base}/#/compare-runs?{query}"


def chromium_binary() -> str:
    """Path of Chromium (``chromium`` or ``chromium-browser`` on PATH).

    Raises:
        UiError: neither is installed (``apt-get install -y chromium``).
    """
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise UiError("Chromium is not installed: apt-get install -y chromium")


def chromium(url: str, *, screenshot: Path | None = None, window: str = "1600,1500", budget_ms: int = 20000) -> str:
    """Load ``url`` in headless Chromium, letting scripts run for ``budget_ms`` of virtual time; return the rendered
    DOM, and save a PNG to ``screenshot`` when given.

    Raises:
        UiError: Chromium failed.
    """
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                 f"--virtual-time-budget={budget_ms}"]
        dom = subprocess.run(
            [binary, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False
        )
        if dom.returncode:
            raise UiError(f"chromium --dump-dom {url} failed ({dom.returncode}): {dom.stderr[-2000:]}")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run(
                [binary, *flags, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180,
                check=False,
            )
            if shot.returncode or not screenshot.is_file():
                raise UiError(f"chromium --screenshot {url} failed ({shot.returncode}): {shot.stderr[-2000:]}")
    return dom.stdout


def ablation_cells(store_uri: str, study: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The latest ablation parent run (of ``study`` when given) and its cell runs.

    Returns:
        ``(experiment_id, [(run_id, run_name), ...])`` of the cells, sorted by name.

    Raises:
        UiError: the store holds no such ablation run, or it has no cells.
        TrackerError: the store cannot be opened.
    """
    client = store_client(store_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = "tags.`switchkd.flow` = 'ablation'" + (f" and tags.study = '{study}'" if study else "")
    parents = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise UiError(f"no ablation run{f' of study {study}' if study else ''} in {store_uri}")
    parent = parents[0]
    cells = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`switchkd.flow` = 'ablation-cell'",
    )
    if not cells:
        raise UiError(f"ablation run {parent.info.run_id} in {store_uri} has no cell runs")
    pairs = sorted((c.info.run_id, c.info.run_name) for c in cells)
    return parent.info.experiment_id, sorted(pairs, key=lambda p: p[1])


def screenshot_ablation(store_uri: str, out: Path, study: str | None = None, host: str = LOOPBACK) -> list[str]:
    """Serve the UI on ``store_uri`` (on ``host``), open the compare view of the latest ablation's cells, save a
    screenshot.

    Returns:
        The cell run names, every one of which was found in the rendered page.

    Raises:
        UiError: the UI, Chromium or the store failed, or a cell name is missing from the page.
    """
    experiment, cells = ablation_cells(store_uri, study)
    with mlflow_ui(store_uri, host=host) as base:
        url = compare_url(base, [run_id for run_id, _ in cells], [experiment])
        dom = chromium(url, screenshot=out)
    missing = [name for _, name in cells if name not in dom]
    if missing:
        raise UiError(f"the compare view {url} does not show the runs {missing}")
    return [name for _, name in cells]


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.mlflow_ui``: screenshot the compare view of an ablation's cells."""
    parser = argparse.ArgumentParser(prog="python -m tasks.mlflow_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="MLflow store URI, e.g. sqlite:////abs/mlflow.db")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--study", default=None, help="ablation study name (default: the latest ablation)")
    parser.add_argument("--host", default=LOOPBACK, help="address to serve the UI on (default 127.0.0.1; a "
                        "non-loopback address of this machine hides the MLflow Assistant panel, see the module doc)")
    args = parser.parse_args(argv)
    try:
        names = screenshot_ablation(args.store, args.out, args.study, args.host)
    except (UiError, TrackerError) as err:
        print(f"tasks.mlflow_ui: {err}", file=sys.stderr)
        return 2
    print(f"compare view of {', '.join(names)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
