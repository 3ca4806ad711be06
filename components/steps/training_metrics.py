"""The training loop's side of MLflow: per-step metrics that survive an MLflow outage, and the loss curve.

An outage during training must not stop it (hours of GPU time for a tracking server), so the metrics wait in
memory and go out once MLflow answers again; see docs/faults.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from components.steps.tracking import RetryPolicy, unreachable_cause
from neuroq.errors import NeuroQError

__all__ = ["MetricsNotLoggedError", "TrainingMetricsLogger", "log_loss_curve"]

log = logging.getLogger(__name__)

# MLflow refuses a batch with more than 1000 metrics. `log_batch` splits a longer one itself, but then a failure
# part way would leave no record of which metrics the server took: TrainingMetricsLogger sends one batch at a time.
_METRIC_BATCH = 1000


class MetricsNotLoggedError(NeuroQError):
    """Training metrics still queued when MLflow did not answer their final flush (the cause is MLflow's error)."""


class TrainingMetricsLogger:
    """The training loop's metrics callback: logs to one MLflow run, and an MLflow outage does not stop training.

    Every call queues its metrics (with their step and wall-clock time) and sends the whole queue in `log_batch`
    requests of one attempt each, `attempt_timeout_s` at most: waiting out the retry policy at every log interval
    would stall training for as long as MLflow is down. When MLflow does not answer, the queue is kept, a warning
    says so once, and the next try comes `retry_interval_s` later; when it answers again, the backlog goes out
    with its original steps and timestamps, so the run's history has no gap. `flush()` at the end of training
    sends what is left under the full `RetryPolicy` and raises `MetricsNotLoggedError` if MLflow is still down.

    Errors that are not an outage (an invalid metric, a deleted run) raise at once: they would not heal by waiting.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, retry_interval_s: float = 30.0,
                 attempt_timeout_s: int = 5) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.retry_interval_s = retry_interval_s
        self.attempt_timeout_s = attempt_timeout_s
        self.pending: list[Metric] = []
        self._down_since: float | None = None  # time.monotonic() of the first failed attempt of this outage
        self._next_try = 0.0

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        if time.monotonic() < self._next_try:
            return
        try:
            with RetryPolicy.single_attempt(self.attempt_timeout_s).applied():
                self._send()
        except Exception as error:
            if unreachable_cause(error) is None:
                raise
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning("MLflow at %s did not answer (%s): training goes on, its metrics wait in memory and are "
                            "retried every %.0f s", self.tracking_uri, type(error).__name__, self.retry_interval_s)
            self._next_try = now + self.retry_interval_s
            return
        if self._down_since is not None:
            log.warning("MLflow at %s answers again after %.0f s: the queued training metrics are logged",
                        self.tracking_uri, time.monotonic() - self._down_since)
            self._down_since = None

    def flush(self) -> None:
        """Send every queued metric under the step's retry policy; `MetricsNotLoggedError` if MLflow still fails."""
        try:
            self._send()
        except Exception as error:
            if unreachable_cause(error) is None:
                raise
            steps = sorted({metric.step for metric in self.pending})
            raise MetricsNotLoggedError(
                f"{len(self.pending)} training metric values (steps {steps[0]}-{steps[-1]}) could not be logged to "
                f"run {self.run_id}."
            ) from error

    def _send(self) -> None:
        client = MlflowClient(self.tracking_uri)
        while self.pending:
            # Dropped from the queue only once the server took them: a failed batch is sent again, never twice.
            batch = self.pending[:_METRIC_BATCH]
            client.log_batch(self.run_id, metrics=batch)
            del self.pending[: len(batch)]


def log_loss_curve(history: Sequence[Mapping[str, float]], artifact_file: str = "plots/loss_curve.png") -> None:
    """Plot train and validation loss against the optimizer step and log the figure to the active run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            points = [(row["step"], row[key]) for row in history if key in row]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 20 else None, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("NeuroQ training loss")
        ax.grid(alpha=0.3)
        ax.legend()
        mlflow.log_figure(fig, artifact_file)
    finally:
        plt.close(fig)
