"""The three served models, registered by the serving tests' own fixtures (tiny, built here, no hub)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import mlflow
import pytest

from tests.serving.conftest import (  # noqa: F401  (fixtures)
    registered_embed,
    registered_rerank,
    store,
    tiny_bi_encoder_dir,
    tiny_cross_encoder_dir,
)
from tests.serving_generation.conftest import checkpoint_dir, registry  # noqa: F401  (fixtures)

# Read when the tests are collected, before any fixture has run.
_MLFLOW_ENVIRONMENT = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI",)}


@pytest.fixture(scope="module", autouse=True)
def _leave_no_mlflow_environment() -> Iterator[None]:
    """Registering the models exports MLFLOW_TRACKING_URI for the rest of the session: later test folders, and
    the `mlflow run` they start, must not inherit it."""
    yield
    for name, value in _MLFLOW_ENVIRONMENT.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    mlflow.set_tracking_uri(_MLFLOW_ENVIRONMENT["MLFLOW_TRACKING_URI"])
