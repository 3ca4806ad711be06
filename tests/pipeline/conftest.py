"""Fixtures of the pipeline tests: a real S3 server, a real `mlflow server` on it, and two pipeline runs.

The two runs of the whole pipeline (kfp.local, bundled corpus, a tiny model) are shared by several tests:
they are the expensive part, and every test reads a different aspect of the same registry and run tree.
The server's backend is a sqlite file and its artifacts go to SeaweedFS, so one pair of runs shows the
local pipeline, the registry policy, the S3 artifact store and (for the UI test) a sqlite-backed UI at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from tests.support.mlflow_server import MlflowServer, mlflow_server
from tests.support.s3server import SeaweedS3

ARTIFACT_BUCKET = "mlflow"

# Small enough for a few seconds of training on 2 CPU cores, big enough to learn the corpus's characters.
TINY = dict(
    n_embd=32, n_head=2, n_ff=64, n_layer=1, seq_length=32, batch_size=8, learning_rate=3e-3, warmup_steps=5,
    eval_interval=0, sample_max_new_tokens=16, experiment_name="neuroq-test", num_threads=1,
)
GOOD_STEPS = 60
# One optimizer step: the model is still close to uniform over the vocabulary, certainly worse.
WORSE_STEPS = 1


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    name: str
    reason: str
    run_id: str


@dataclasses.dataclass(frozen=True)
class PipelineRuns:
    server: MlflowServer
    s3: SeaweedS3
    bucket: str
    client: MlflowClient
    experiment_id: str
    good: PipelineRun
    worse: PipelineRun
    pipeline_root: Path


@pytest.fixture(autouse=True)
def _restore_tracking_uri() -> Iterator[None]:
    """Steps run in-process here call mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI: put it
    back, so later tests (and other test areas) do not log to a store that a finished test removed."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    """MLflow's artifact bucket, and a public `commoncrawl` bucket for a fake crawl, on one server."""
    with SeaweedS3(buckets=(ARTIFACT_BUCKET,), public_read_buckets=("commoncrawl",)) as server:
        yield server


@pytest.fixture(scope="session")
def tracking_server(s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(workdir, artifacts_destination=f"s3://{ARTIFACT_BUCKET}/artifacts", env=s3.env()) as server:
        yield server


@pytest.fixture(scope="session")
def pipeline_runs(
    tracking_server: MlflowServer, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> PipelineRuns:
    from pipelines.run import run_local

    root = tmp_path_factory.mktemp("kfp")
    runs = {}
    for name, steps in (("good", GOOD_STEPS), ("worse", WORSE_STEPS)):
        params = PipelineParams(**TINY, max_steps=steps)
        runs[name] = run_local(params, pipeline_root=root, tracking_uri=tracking_server.url,
                               run_name=f"test-{name}").reason
    client = MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name(TINY["experiment_name"])
    parents = {
        run.info.run_name: run.info.run_id
        for run in client.search_runs([experiment.experiment_id], filter_string="tags.`neuroq.pipeline` = 'neuroq'")
    }
    return PipelineRuns(
        server=tracking_server,
        s3=s3,
        bucket=ARTIFACT_BUCKET,
        client=client,
        experiment_id=experiment.experiment_id,
        good=PipelineRun("good", runs["good"], parents["test-good"]),
        worse=PipelineRun("worse", runs["worse"], parents["test-worse"]),
        pipeline_root=root,
    )
