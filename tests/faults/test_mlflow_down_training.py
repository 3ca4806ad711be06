"""The tracking server down while train_neuroq trains: training goes on, and its metrics reach the run once the
server is back; a server still down when training ends fails the step after the weights are in its output.

Real processes: `mlflow server` (sqlite backend, local artifacts) SIGKILLed and started again on the same port and
store; the step runs in-process as the KFP component calls it, on the bundled corpus. The outage is timed by a
callback put in front of the step's own, through a wrapper of `neuroq.train.train` (no hooks in the product).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps import torchrun
from components.steps.tracking import TrackingUnavailableError
from components.steps.training_metrics import TrainingMetricsLogger
from neuroq.checkpoint import load_checkpoint, verify_checkpoint
from tests.faults.conftest import call_first_in_training, run_train_neuroq, train_neuroq_inputs
from tests.pipeline.conftest import TINY
from tests.support.mlflow_server import MlflowServer, mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_retries")]

STEPS = 40
LOGGED_STEPS = list(range(2, STEPS + 1, 2))  # log_interval is max_steps // 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path / "mlflow-server") as running:
        yield running


@pytest.fixture
def prepared(server: MlflowServer, tmp_path: Path):
    params = PipelineParams(**{**TINY, "experiment_name": "faults-training"}, max_steps=STEPS)
    return train_neuroq_inputs(params, server.url, tmp_path)


def outage(monkeypatch: pytest.MonkeyPatch, server: MlflowServer, *, down_at: int, back_at: int | None) -> None:
    """Kill the server when training reports step `down_at`, start it again at `back_at` (never with None)."""

    def switch(metrics: dict[str, float], step: int) -> None:
        if step == down_at:
            server.kill()
        elif step == back_at:
            server.start()

    call_first_in_training(monkeypatch, switch)


def train_run(client: MlflowClient, parent_run_id: str):
    [run] = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                             "tags.`neuroq.step` = 'train_neuroq'")
    return run


def test_the_server_down_mid_training_neither_stops_it_nor_loses_a_metric(prepared, server, monkeypatch):
    outage(monkeypatch, server, down_at=10, back_at=30)

    summary, out = run_train_neuroq(prepared)

    assert summary["steps"] == STEPS
    assert load_checkpoint(out).extra["step"] == STEPS
    client = MlflowClient(server.url)
    run = train_run(client, prepared[1].parent_run_id)
    assert run.info.status == "FINISHED"
    # Every logged step exactly once: those logged while the server was down were sent once it was back.
    for key in ("train_loss", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == LOGGED_STEPS, key
    assert run.data.metrics["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss_curve.png"]


def test_the_server_still_down_when_training_ends_fails_the_step_after_the_weights_are_in_its_output(
    prepared, server, monkeypatch
):
    outage(monkeypatch, server, down_at=10, back_at=None)

    with pytest.raises(TrackingUnavailableError) as failure:
        run_train_neuroq(prepared)

    out = prepared[2] / "model"
    message = str(failure.value)
    assert message.startswith(f"step train_neuroq: the MLflow tracking server {server.url} did not answer (")
    # From step 10 on: the kill comes in the callback just before the step's own logger sees step 10.
    assert re.search(r" \d+ training metric values \(steps 10-40\) could not be logged to run \w+\.", message)
    assert f"The trained weights are intact in {out} (every file matches the sha256" in message
    assert message.endswith("a retry of this step trains again (with a checkpoint_dir it would resume), or run "
                            "evaluate and register on this folder.")
    assert verify_checkpoint(out)["files"].keys() == {"model.safetensors", "tokenizer.model"}
    assert load_checkpoint(out).extra["step"] == STEPS


def test_the_metrics_torchrun_rank_0_could_not_log_are_sent_by_the_step(prepared, server, monkeypatch):
    """gpus=2: the outage covers the whole torchrun launch, so rank 0 hands every metric back to the step."""
    real_launch = torchrun.launch

    def launch_during_outage(*args, **kwargs):
        server.kill()
        try:
            return real_launch(*args, **kwargs)
        finally:
            server.start()

    monkeypatch.setattr(torchrun, "launch", launch_during_outage)

    summary, _ = run_train_neuroq(prepared, gpus=2, batch_size=4)

    client = MlflowClient(server.url)
    run = train_run(client, prepared[1].parent_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train_processes"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == LOGGED_STEPS
    assert summary["steps"] == STEPS


def test_the_logger_sends_its_backlog_in_order_once_the_server_answers_and_raises_what_waiting_cannot_fix(server):
    client = MlflowClient(server.url)
    run_id = client.create_run(client.create_experiment("logger")).info.run_id
    logger = TrainingMetricsLogger(server.url, run_id, retry_interval_s=0, attempt_timeout_s=2)

    logger({"loss": 4.0}, 1)
    server.kill()
    logger({"loss": 3.0}, 2)
    logger({"loss": 2.0}, 3)
    assert [(m.step, m.value) for m in logger.pending] == [(2, 3.0), (3, 2.0)]
    server.start()
    logger({"loss": 1.0}, 4)

    assert logger.pending == []
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    # A run that does not exist will not appear by waiting: raised at once, not queued.
    with pytest.raises(MlflowException, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        TrainingMetricsLogger(server.url, "0" * 32)({"loss": 1.0}, 1)
