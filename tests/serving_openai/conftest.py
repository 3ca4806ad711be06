"""One real `python -m serving openai` process for the session, over three models registered in a temporary
sqlite store: a small untrained NeuroQ (`neuroq@champion`: the tiny preset with 6 layers and a 1024-token
context, so that a long answer takes seconds and a stream can be interrupted mid-way), and tiny BERT embedding and rerank models (`ruri-embed@champion`,
`ruri-rerank@champion`) registered under the served names of the former server's models, so its clients'
bodies work verbatim."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlflow
import pytest

from serving.generation.log import log_neuroq_model
from serving.ruri.register import RegisterConfig, register
from tests.serving.tiny_models import build_bi_encoder, build_cross_encoder
from tests.support.neuroq_checkpoint import save_tiny_checkpoint
from tests.support.openai_front import FrontServer

API_KEY = "sk-test-0123456789"
CONTEXT = 1024
MAX_NEW_TOKENS = 1000
MAX_BODY_BYTES = 200_000
EMBED_SERVED_NAME = "cl-nagoya/ruri-v3-310m"
RERANK_SERVED_NAME = "cl-nagoya/ruri-v3-reranker-310m"


@dataclass(frozen=True)
class Front:
    url: str
    server: FrontServer


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[str]:
    """neuroq, ruri-embed and ruri-rerank, each version 1 with alias champion; yields the tracking URI."""
    root = tmp_path_factory.mktemp("front-registry")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        for experiment in ("serving-generation", "ruri-serving"):
            mlflow.create_experiment(experiment, artifact_location=str(root / "artifacts" / experiment))
        checkpoint = save_tiny_checkpoint(root / "neuroq", max_seq_len=CONTEXT, n_layer=6)
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("serving-generation").experiment_id):
            info = log_neuroq_model(checkpoint, registered_model_name="neuroq")
        mlflow.MlflowClient().set_registered_model_alias("neuroq", "champion", info.registered_model_version)
        register(RegisterConfig(task="embed", model=str(build_bi_encoder(root / "bi-encoder")), alias="champion",
                                served_name=EMBED_SERVED_NAME))
        register(RegisterConfig(task="rerank", model=str(build_cross_encoder(root / "cross-encoder")),
                                alias="champion", served_name=RERANK_SERVED_NAME))
        yield tracking_uri
    finally:
        mlflow.set_tracking_uri(previous)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def front(registry, tmp_path_factory) -> Iterator[Front]:
    workdir = tmp_path_factory.mktemp("front")
    env = {
        "NEUROQ_SERVING_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "NEUROQ_SERVING_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "NEUROQ_SERVING_SESSION_DIR": str(workdir / "sessions"),
        "OMP_NUM_THREADS": "1",
    }
    models = {task: f"models:/{name}@champion"
              for task, name in (("generate", "neuroq"), ("embed", "ruri-embed"), ("rerank", "ruri-rerank"))}
    server = FrontServer(models, registry, api_key=API_KEY, env=env, log_dir=workdir).start()
    try:
        yield Front(server.wait_ready(), server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def client(front):
    """The real, unmodified OpenAI SDK pointed at the front."""
    from openai import OpenAI

    return OpenAI(base_url=f"{front.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def long_greedy_chat(complete: Callable[[dict], dict]) -> dict:
    """A chat body whose greedy answer from the untrained model runs to max_tokens rather than meeting eos (the
    first of a few prompts that does, asked through `complete`: which one depends on the random weights)."""
    for question in ("日本の首都はどこですか？", "今日は", "猫"):
        body = {"model": "neuroq", "messages": [{"role": "user", "content": question}], "temperature": 0,
                "max_tokens": MAX_NEW_TOKENS}
        whole = complete(body)
        if whole["choices"][0]["finish_reason"] == "length":
            assert whole["usage"]["completion_tokens"] == MAX_NEW_TOKENS
            return body
    raise AssertionError("no prompt's greedy answer runs to max_tokens: add one that does")
