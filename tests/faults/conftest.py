"""Fixtures of the fault tests: a real checkpoint as train_neuroq leaves it, a validation folder, and a registry
seeded with `@champion` and `@challenger` on two different versions, so "no alias moved" checks each one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps import base, data, training
from components.steps.base import RunRef, text_digest
from components.steps.tracking import RETRY_ENV, RetryPolicy
import neuroq.train
from neuroq.train import MetricsCallback, train
from serving.promotion import CHALLENGER, CHAMPION, score_tag
from tests.support.pyfunc_models import Constant
from tests.support.training import blocks, corpus, tiny_config  # noqa: F401 (corpus is a fixture)

# A champion score no challenger can miss: the retry after a fault then moves both aliases.
CHAMPION_BITS_PER_CHAR = 99.0
# Three quick attempts per request: the policy's shape, at a test's pace (the defaults take ~15 s to give up).
FAST_RETRIES = RetryPolicy(max_retries=2, backoff_factor=0, backoff_jitter=0, timeout_s=10)


@pytest.fixture(autouse=True)
def _restore_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Steps run in-process export MLFLOW_TRACKING_URI (mlflow.set_tracking_uri) and the retry policy's variables:
    monkeypatch puts back whatever the environment held before the test."""
    for name in ("MLFLOW_TRACKING_URI", *RETRY_ENV.values()):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(saved)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> RetryPolicy:
    """Through the environment, as an operator would set it; monkeypatch restores the variables afterwards."""
    for field, name in RETRY_ENV.items():
        monkeypatch.setenv(name, str(getattr(FAST_RETRIES, field)))
    assert RetryPolicy.from_env() == FAST_RETRIES
    return FAST_RETRIES


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """The exported checkpoint of a few steps of a tiny model: what train_neuroq writes to its output artifact."""
    out = tmp_path_factory.mktemp("train_neuroq")
    with one_thread():
        result = train(tiny_config(corpus, out, max_steps=4, eval_interval=0, ckpt_interval=0),
                       blocks(corpus, "train"), None, corpus["tokenizer"])
    return result.checkpoint_path


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread, as in the training subprocesses: the same reduction order, so results compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def val_dir(corpus, tmp_path_factory) -> Path:
    """A validation split folder as merge_dedup_split writes it (JSONL shards), small enough to score in a blink."""
    folder = tmp_path_factory.mktemp("validation")
    with (folder / "part-00000.jsonl").open("w", encoding="utf-8") as handle:
        for text in corpus["val_docs"][:16]:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return folder


def step_params(name: str) -> PipelineParams:
    return PipelineParams(registered_model_name=name, experiment_name="faults", sample_prompts="こんにちは",
                          sample_max_new_tokens=4, num_threads=1)


def seed_registry(tracking_uri: str, name: str, val_dir: Path) -> dict[str, str]:
    """Versions 1 (`@champion`) and 2 (`@challenger`) of `name`, of a stand-in pyfunc: these tests are about where
    aliases point, and a NeuroQ upload through the server costs seconds. The champion carries a score on
    `val_dir`'s text, so a later promotion compares with it without loading it."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("faults")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("faults")
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment_id, run_name="seed"):
            mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[],
                                    registered_model_name=name)
    client.set_registered_model_alias(name, CHAMPION, "1")
    client.set_registered_model_alias(name, CHALLENGER, "2")
    digest = text_digest(json.loads(line)["text"] for line in (val_dir / "part-00000.jsonl").open(encoding="utf-8"))
    client.set_model_version_tag(name, "1", score_tag(digest), repr(CHAMPION_BITS_PER_CHAR))
    return aliases(client, name)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def train_neuroq_inputs(params: PipelineParams, tracking_uri: str, root: Path) -> tuple[PipelineParams, RunRef, Path]:
    """The bundled corpus split and tokenized under `root`, in a pipeline parent run: what train_neuroq reads."""
    data.ingest_hf(params, str(root / "hf"))
    run = base.start(params, tracking_uri=tracking_uri)
    data.merge_dedup_split(params, run, [str(root / "hf")], str(root / "train"), str(root / "val"))
    training.train_tokenizer(params, run, str(root / "train"), str(root / "tokenizer.model"))
    return params, run, root


def run_train_neuroq(inputs: tuple[PipelineParams, RunRef, Path], name: str = "model", **changes) -> tuple[dict, Path]:
    """The train_neuroq step as its KFP component calls it, on `inputs`, with `changes` to the params; its summary
    and its output folder `root/name`."""
    params, run, root = inputs
    out = root / name
    summary = training.train_neuroq(dataclasses.replace(params, **changes), run, str(root / "train"), str(root / "val"),
                                 str(root / "tokenizer.model"), str(out))
    return summary, out


def call_first_in_training(monkeypatch: pytest.MonkeyPatch, callback: MetricsCallback) -> None:
    """Every `neuroq.train.train` calls `callback(metrics, step)` before its own callbacks: how a test times a fault
    to a training step without hooks in the product."""
    real_train = neuroq.train.train

    def train(config, train_blocks, val_blocks, tokenizer, callbacks=()):
        return real_train(config, train_blocks, val_blocks, tokenizer, callbacks=[callback, *callbacks])

    monkeypatch.setattr(neuroq.train, "train", train)
