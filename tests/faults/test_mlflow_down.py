"""The tracking server, or the S3 store behind it, down when the register step logs the model: the step fails
within the retry policy with an error naming what is down and where the trained weights are; the weights are
intact, no alias moved, and the same step succeeds once the service is back.

Real processes throughout: `mlflow server` (sqlite backend, artifacts proxied to SeaweedFS S3), stopped and
started again on the same port; the steps run in-process as the KFP components call them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.steps import base, evaluation
from components.steps.tracking import TrackingUnavailableError
from neuroq.checkpoint import load_checkpoint, verify_checkpoint
from serving.promotion import CHALLENGER, CHAMPION
from tests.faults.conftest import aliases, file_hashes, seed_registry, step_params
from tests.support.mlflow_server import MlflowServer, mlflow_server
from tests.support.s3server import SeaweedS3

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_retries")]

BUCKET = "mlflow"


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    with SeaweedS3(buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def server(s3: SeaweedS3, tmp_path: Path) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path / "mlflow-server", artifacts_destination=f"s3://{BUCKET}/artifacts",
                       env=s3.env()) as running:
        yield running


def _runs(client: MlflowClient, parent_run_id: str) -> set[tuple[str, str]]:
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {("parent", parent.info.status)} | {(run.info.run_name, run.info.status) for run in children}


def test_s3_then_the_tracking_server_down_at_register_fail_clearly_and_fast_and_the_step_succeeds_once_back(
    server, s3, trained, val_dir
):
    name = "mlflow-down"
    client = MlflowClient(server.url)
    before = seed_registry(server.url, name, val_dir)
    params = step_params(name)
    run = base.start(params, tracking_uri=server.url)
    scores = evaluation.evaluate(params, run, str(trained), str(val_dir))
    hashes = file_hashes(trained)

    def register():
        return evaluation.register(params, run, str(trained), str(val_dir), evaluation=scores, train_digest="t")

    # 1. The S3 store behind the server is down: the model upload fails; the server records the failure.
    s3.stop(keep_data=True)
    with pytest.raises(TrackingUnavailableError) as failure:
        register()

    message = str(failure.value)
    assert message.startswith(f"step register: the artifact store behind the tracking server {server.url} (")
    assert "this run's artifacts are mlflow-artifacts:/" in message
    assert f"The trained weights are intact in {trained} (every file matches the sha256" in message
    assert _runs(client, run.parent_run_id) == {("parent", "FAILED"), ("evaluate", "FINISHED"), ("register", "FAILED")}
    assert aliases(client, name) == before == {CHAMPION: "1", CHALLENGER: "2"}
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    # 2. The tracking server itself crashes: the step gives up within the retry policy, not MLflow's minutes.
    server.kill()
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as failure:
        register()
    elapsed = time.monotonic() - started

    message = str(failure.value)
    assert message.startswith(f"step register: the MLflow tracking server {server.url} did not answer (")
    assert "within 3 attempts per request" in message and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in message
    assert f"The trained weights are intact in {trained}" in message
    assert elapsed < 15, f"gave up after {elapsed:.1f}s"

    # The weights the step was logging are untouched by either failure.
    assert file_hashes(trained) == hashes
    assert verify_checkpoint(trained)["files"].keys() == {"model.safetensors", "tokenizer.model"}
    assert load_checkpoint(trained).model.num_params() > 0

    # 3. Both back, S3 with everything it held: the versions registered before the outage still load.
    s3.start()
    server.restart()
    assert aliases(client, name) == before and len(client.search_model_versions(f"name = '{name}'")) == 2
    assert mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict({"prompt": "x"})["choices"]

    decision = register()

    assert decision.promoted and decision.version == "3"
    assert aliases(client, name) == {CHAMPION: "3", CHALLENGER: "3"}
    assert _runs(client, run.parent_run_id) == {
        ("parent", "FINISHED"), ("evaluate", "FINISHED"), ("register", "FAILED"), ("register", "FINISHED")
    }
