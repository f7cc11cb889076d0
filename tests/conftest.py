"""Shared fixtures: a private results folder, a tiny user model, and a cached dense checkpoint."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "tests" / "fixtures" / "tiny_cnn.py"
TINY_REF = f"{TINY_MODEL}:tiny_cnn"
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def ray_searcher(results_root: Path, name: str, trials: int):
    """A Ray Tune searcher on a new ``jetson-nano`` study of the tiny user CNN (no cluster needed).

    Returns:
        ``(url, study, config, searcher)``.
    """
    from autoprune.search.backends import ray as rb
    from autoprune.search.config import SearchConfig
    from autoprune.search.objective import build_pipeline
    from autoprune.search.study import open_study, study_space

    url = f"sqlite:///{results_root / (name + '.db')}"
    config = SearchConfig(model=TINY_REF, target="jetson-nano", finetune_epochs=0, trials=trials)
    study, config, _ = open_study(url, name, config, {}, None)
    searcher = rb.make_searcher(study, config, url, build_pipeline(config, study_space(study, config), False)[0].groups)
    return url, study, config, searcher
