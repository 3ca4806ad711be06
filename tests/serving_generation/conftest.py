"""A tiny NeuroQ checkpoint, logged and registered as `neuroq@champion` in a sqlite store, and real
`mlflow models serve` processes on it.

The model is untrained (random weights): these tests check plumbing (request shapes, errors, batching, sessions,
artifact integrity), not text quality. Servers are session-scoped because each one spends ~10 s importing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests

from serving.generation.log import log_neuroq_model
from tests.support import fuzz
from tests.support.mlflow_serve import ModelServer
from tests.support.neuroq_checkpoint import save_tiny_checkpoint

MODEL_NAME = "neuroq"
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"
MAX_PROMPTS = 8  # small, so "too many prompts" is cheap to provoke


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    experiment_id: str
    artifact_root: Path
    name: str
    version: str


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "neuroq")


@pytest.fixture(scope="session")
def registry(tmp_path_factory, checkpoint_dir) -> Iterator[Registry]:
    """`neuroq` version 1 = the tiny checkpoint, alias champion; artifacts under a temp folder, not ./mlruns."""
    root = tmp_path_factory.mktemp("registry")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = mlflow.create_experiment("serving-generation", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_neuroq_model(checkpoint_dir, registered_model_name=MODEL_NAME)
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
        yield Registry(tracking_uri, experiment, root / "artifacts", MODEL_NAME, version)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
        mlflow.set_tracking_uri(previous)


def server_env(session_dir: Path) -> dict[str, str]:
    return {
        "NEUROQ_SERVING_SESSION_DIR": str(session_dir),
        "NEUROQ_SERVING_MODEL_URI": CHAMPION_URI,
        "NEUROQ_SERVING_MAX_PROMPTS": str(MAX_PROMPTS),
        "NEUROQ_SERVING_MAX_CHARS": "2000",
        # One torch thread per worker: two cores, up to two workers.
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def served(registry, tmp_path_factory) -> Iterator[str]:
    """Base URL of `mlflow models serve -m models:/neuroq@champion` with one worker."""
    workdir = tmp_path_factory.mktemp("serve-1")
    server = ModelServer(CHAMPION_URI, registry.tracking_uri, env=server_env(workdir / "sessions"), log_dir=workdir)
    server.start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served_two_workers(registry, tmp_path_factory) -> Iterator[ModelServer]:
    workdir = tmp_path_factory.mktemp("serve-2")
    server = ModelServer(CHAMPION_URI, registry.tracking_uri, workers=2, env=server_env(workdir / "sessions"),
                         log_dir=workdir)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pyfunc(registry, tmp_path_factory):
    """The champion loaded in this process (mlflow.pyfunc.load_model), for what HTTP cannot observe."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NEUROQ_SERVING_SESSION_DIR", str(tmp_path_factory.mktemp("pyfunc-sessions")))
        yield mlflow.pyfunc.load_model(f"models:/{registry.name}@champion")


@pytest.fixture
def invoke(served):
    """POST a JSON body to /invocations; returns the `requests` response."""

    def post(body, timeout: float = 60):
        return requests.post(f"{served}/invocations", json=body, timeout=timeout)

    return post


def pytest_terminal_summary(terminalreporter):
    fuzz.summarize(terminalreporter)
