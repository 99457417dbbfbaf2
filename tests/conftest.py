"""Shared, expensive fixtures: tiny models and one Ray cluster per test session (helpers
that tests import live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny_tied",
        layers=2,
        hidden=64,
        tied_embeddings=True,
        seed=1,
    )


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from inpo.cluster import QUIET_ENV

    os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(QUIET_ENV)},
    )
    yield
    ray.shutdown()
