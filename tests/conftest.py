"""Shared fixtures: a private results folder, a tiny user model, and a cached dense checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "tests" / "fixtures" / "tiny_cnn.py"
TINY_REF = f"{TINY_MODEL}:tiny_cnn"
PYTHON = sys.executable


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def results_root(tmp_path_factory) -> Path:
    """A results folder shared by the session (checkpoints are trained once)."""
    root = tmp_path_factory.mktemp("results")
    os.environ["AUTOPRUNE_RESULTS"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_dense(results_root):
    """The tiny CNN trained for six epochs on digits, cached in ``results_root``."""
    from autoprune.data import load_data
    from autoprune.train import TrainConfig, ensure_dense

    data = load_data("digits")
    model, rec = ensure_dense(TINY_REF, data, 0, config=TrainConfig(epochs=6), progress=False)
    return model, data, rec


def cli_env(results_root: Path) -> dict[str, str]:
    """Environment for running ``python -m autoprune`` in a subprocess."""
    return {**os.environ, "AUTOPRUNE_RESULTS": str(results_root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL URL of ``$AUTOPRUNE_TEST_PG_URL`` (``.ci/postgres.sh start`` prints it), else skip."""
    url = os.environ.get("AUTOPRUNE_TEST_PG_URL")
    if not url:
        pytest.skip('no PostgreSQL: AUTOPRUNE_TEST_PG_URL is unset (run `eval "$(.ci/postgres.sh start)"`)')
    return url
