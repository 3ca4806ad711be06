"""MLflow run structure of a pipeline run: one parent run, and one nested child run per step.

The first step creates the parent run and hands its id to every later step, which opens a child run under it
(tag `mlflow.parentRunId`). Steps share nothing else, so the structure is the same whether the steps are
subprocesses of `kfp.local` or pods on a cluster. The parent stays RUNNING until the register step closes it;
a failing step marks its own run and the parent FAILED (a successful retry sets the parent back to RUNNING).

The tracking URI comes from `MLFLOW_TRACKING_URI`; without it, a sqlite store `mlflow.db` in the working
directory with artifacts beside it. Against `mlflow server` with proxied S3 artifacts nothing changes: clients
only ever talk HTTP to the server.

MLflow down: every request is retried under `RetryPolicy` (MLflow's own HTTP retry variables, with bounds that
fail a dead server in seconds instead of MLflow's minutes per request), then the step fails with a
`TrackingUnavailableError` naming the server, the artifact store and what the step keeps on disk. The one
exception is the training loop's metrics (`training_metrics.TrainingMetricsLogger`): an outage there must not stop
training, so they wait in memory and go out once MLflow answers again. See docs/faults.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from neuroq.errors import ConfigError, NeuroQError

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "RETRY_ENV",
    "STEP_TAG",
    "RetryPolicy",
    "TrackingUnavailableError",
    "adopt_pipeline_run",
    "code_version",
    "finish_pipeline_run",
    "log_on_parent",
    "log_manifest_dataset",
    "resolve_tracking_uri",
    "start_pipeline_run",
    "step_run",
    "unreachable_cause",
]

log = logging.getLogger(__name__)

PIPELINE_TAG = "neuroq.pipeline"
STEP_TAG = "neuroq.step"


class TrackingUnavailableError(NeuroQError):
    """The tracking server, or the artifact store behind it, did not answer within the retry policy."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long a step keeps retrying MLflow: MLflow's own HTTP retry variables, filled in where unset.

    MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) retry a dead server for about 4 minutes per
    request, and a failing step makes several requests on its way out, so a step used to hang 10+ minutes.
    With these defaults a refused connection fails a request after ~15 s (sleeps of 2, 4 and 8 s, each plus up to
    `backoff_jitter` s); a server that accepts but never answers, after (max_retries + 1) x timeout_s. Requests
    answered 408/429/5xx are retried the same way, so an artifact store down behind `mlflow server` (which
    answers 500) fails like a dead server. A variable set in the environment wins over the default here.
    """

    max_retries: int = 4
    backoff_factor: int = 1  # seconds; the n-th retry sleeps backoff_factor * 2**(n-1) (the first sleeps 0)
    backoff_jitter: float = 1.0  # seconds of random extra sleep per retry, so many pods do not retry in step
    timeout_s: int = 60  # per attempt; large files go through the server's artifact proxy within one request

    def __post_init__(self) -> None:
        # MLflow's own bounds (it refuses more than 10 retries or a backoff factor above 120).
        bounds = {"max_retries": (0, 10), "backoff_factor": (0, 120), "backoff_jitter": (0, 60), "timeout_s": (1, 3600)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{RETRY_ENV[name]} must be a number in [{low}, {high}], got {value!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(RETRY_ENV[field.name], "").strip()
            if raw:
                kind = type(field.default)
                try:
                    values[field.name] = kind(raw)
                except ValueError:
                    raise ConfigError(f"{RETRY_ENV[field.name]} must be a number, got {raw!r}") from None
        return cls(**values)

    def apply(self) -> RetryPolicy:
        """Export the policy as MLflow's variables: every MLflow request in this process then follows it."""
        for field in dataclasses.fields(self):
            os.environ[RETRY_ENV[field.name]] = str(getattr(self, field.name))
        return self

    def describe(self) -> str:
        return (f"{self.max_retries + 1} attempts per request, backoff factor {self.backoff_factor} s, "
                f"timeout {self.timeout_s} s ({', '.join(RETRY_ENV.values())})")

    @contextlib.contextmanager
    def applied(self) -> Iterator[RetryPolicy]:
        """This policy for the requests made inside the block; the environment's policy again after it."""
        previous = RetryPolicy.from_env()
        self.apply()
        try:
            yield self
        finally:
            previous.apply()

    @classmethod
    def single_attempt(cls, timeout_s: int) -> RetryPolicy:
        """One try, no sleeps: for requests whose failure is handled by the caller instead of waited out."""
        return cls(max_retries=0, backoff_factor=0, backoff_jitter=0, timeout_s=timeout_s)


# RetryPolicy field -> the MLflow variable that carries it.
RETRY_ENV = {
    "max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "backoff_factor": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "backoff_jitter": "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "timeout_s": "MLFLOW_HTTP_REQUEST_TIMEOUT",
}


def _client(tracking_uri: str) -> MlflowClient:
    RetryPolicy.from_env().apply()
    return MlflowClient(tracking_uri)


def resolve_tracking_uri(uri: str = "") -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db`, made absolute.

    Resolved once by the first step and passed on, so steps started in other working directories (kfp.local
    subprocesses, MLproject runs) all write to the same store.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside its db file, not into whatever the cwd happens to be."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")


# MLflow's UI opens an experiment in the view its kind names; without the tag it guesses, and an experiment of
# registered pyfuncs with `predict` looks like GenAI development to it (traces and judges instead of runs).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = _sqlite_artifact_root(tracking_uri)
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    _mark_model_training(client, experiment)
    return experiment.experiment_id


def _mark_model_training(client: MlflowClient, experiment: Any) -> None:
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def code_version() -> str:
    """The git commit of the code that runs, or the installed package version when there is no checkout.

    A cluster image built without `.git` sets NEUROQ_CODE_VERSION at build time instead.
    """
    if version := os.environ.get("NEUROQ_CODE_VERSION"):
        return version
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode == 0:
            return result.stdout.strip()
    try:
        return f"neuroq-mlops=={importlib.metadata.version('neuroq-mlops')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start_pipeline_run(
    tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create the parent run (left RUNNING), log the pipeline parameters on it, and return its id."""
    client = _client(tracking_uri)
    run = client.create_run(
        _experiment_id(client, tracking_uri, experiment),
        run_name=run_name or None,
        tags={PIPELINE_TAG: "neuroq", **tags},
    )
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    return run.info.run_id


def log_on_parent(tracking_uri: str, parent_run_id: str, metrics: Mapping[str, float],
                  tags: Mapping[str, str] = ()) -> None:
    """Headline figures of a step on the pipeline's parent run, where the runs table and its charts compare runs."""
    client = _client(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in dict(tags).items()])


def finish_pipeline_run(tracking_uri: str, parent_run_id: str) -> None:
    _client(tracking_uri).set_terminated(parent_run_id, RunStatus.to_string(RunStatus.FINISHED))


def adopt_pipeline_run(tracking_uri: str, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
    """Use an existing run as the parent run, logging only the params it lacks (params are write-once)."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()
                                     if key not in run.data.params])
    for key, value in {PIPELINE_TAG: "neuroq", **tags}.items():
        client.set_tag(run_id, key, value)
    _mark_model_training(client, client.get_experiment(run.info.experiment_id))


@contextlib.contextmanager
def step_run(
    tracking_uri: str, parent_run_id: str, step: str, experiment: str, *, kept: Callable[[], str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """The active run of one step: a child of `parent_run_id`, or a standalone run when that is empty.

    A standalone step started by `mlflow run` logs into the run MLflow made for it (MLFLOW_RUN_ID). A failing
    step marks its run and the parent FAILED. When MLflow itself failed (no answer within the `RetryPolicy`), the
    error is re-raised as a `TrackingUnavailableError` that names the server or artifact store and ends with
    `kept()`: what the step's files still hold, e.g. the trained weights, so nobody retrains to get them back.
    """
    policy = RetryPolicy.from_env().apply()
    mlflow.set_tracking_uri(tracking_uri)
    run: mlflow.ActiveRun | None = None
    try:
        run = _start_step_run(tracking_uri, parent_run_id, step, experiment)
        yield run
        mlflow.end_run()
    except BaseException as error:
        cause = unreachable_cause(error)
        _mark_failed(tracking_uri, run, parent_run_id, policy, quick=cause is not None)
        if cause is None:
            raise
        artifact_uri = run.info.artifact_uri if run is not None else ""
        message = _unreachable_message(step, tracking_uri, artifact_uri, policy, cause)
        if not isinstance(error, MlflowException):
            message += f" {error}"  # the step's own account, e.g. which registry alias moved before the outage
        raise TrackingUnavailableError(f"{message} {kept()}" if kept else message) from error


def _start_step_run(tracking_uri: str, parent_run_id: str, step: str, experiment: str) -> mlflow.ActiveRun:
    client = MlflowClient(tracking_uri)
    tags = {STEP_TAG: step, "code_version": code_version()}
    system_metrics = _system_metrics_available()
    if not parent_run_id:
        experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else _experiment_id(client, tracking_uri, experiment)
        return mlflow.start_run(experiment_id=experiment_id, run_name=step, tags=tags,
                                log_system_metrics=system_metrics)
    parent = client.get_run(parent_run_id)
    if parent.info.status != "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    return mlflow.start_run(
        experiment_id=parent.info.experiment_id,
        run_name=step,
        parent_run_id=parent_run_id,
        tags=tags,
        log_system_metrics=system_metrics,
    )


def _mark_failed(tracking_uri: str, run: mlflow.ActiveRun | None, parent_run_id: str, policy: RetryPolicy, *,
                 quick: bool) -> None:
    """Mark the step's run and the parent FAILED, best effort: the step's own error is what must surface.

    With `quick` (MLflow already did not answer) each call gets one short attempt: a whole retry policy per call
    would only delay that error.
    """
    failed = RunStatus.to_string(RunStatus.FAILED)
    marks: list[tuple[str, Callable[[], None]]] = []
    if run is not None:
        marks.append((run.info.run_id, lambda: mlflow.end_run(failed)))
    if parent_run_id:
        marks.append((parent_run_id, lambda: MlflowClient(tracking_uri).set_terminated(parent_run_id, failed)))
    with (RetryPolicy.single_attempt(min(policy.timeout_s, 10)) if quick else policy).applied():
        for run_id, mark in marks:
            try:
                mark()
            except Exception as error:  # noqa: BLE001 - whatever it is, the step's own error matters more
                log.warning("could not mark run %s FAILED in MLflow at %s: %s", run_id, tracking_uri, error)


def unreachable_cause(error: BaseException) -> BaseException | None:
    """The network failure under an MLflow error, if that is what it is (MLflow wraps it in MlflowException)."""
    network: tuple[type[BaseException], ...] = (requests.ConnectionError, requests.Timeout,
                                                 requests.exceptions.RetryError)
    with contextlib.suppress(ImportError):
        from botocore.exceptions import ConnectionError as BotoConnectionError

        network += (BotoConnectionError,)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, network):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _unreachable_message(step: str, tracking_uri: str, artifact_uri: str, policy: RetryPolicy,
                         cause: BaseException) -> str:
    url = str(getattr(getattr(cause, "request", None), "url", "") or "")
    if "/mlflow-artifacts/" in url:
        # The server answered, with errors, for its artifact proxy: the store behind it is what is down.
        where = (f"the artifact store behind the tracking server {tracking_uri} (its --artifacts-destination; this "
                 f"run's artifacts are {artifact_uri or 'unknown'})")
    elif not isinstance(cause, requests.RequestException):
        where = f"the artifact store {artifact_uri or '(unknown)'}"
    else:
        where = f"the MLflow tracking server {tracking_uri}"
    detail = f"{type(cause).__name__}: {cause}"
    if len(detail) > 400:
        detail = detail[:400] + "..."
    return f"step {step}: {where} did not answer ({detail}) within {policy.describe()}."


def _system_metrics_available() -> bool:
    # MLflow samples CPU/memory (and GPU with pynvml) through psutil; without it, asking only logs a warning.
    return importlib.util.find_spec("psutil") is not None


def log_manifest_dataset(manifest: Mapping[str, Any], uri: str, *, name: str, context: str,
                         also_on: str = "") -> None:
    """Log a dataset described by an ingest/split manifest as an input of the active run (and of run `also_on`).

    Only metadata goes to MLflow (source URI, content digest, counts): the data stays where the pipeline
    wrote it, and the digest identifies it across runs.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    try:
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and then warns that a path is ambiguous between them.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            source = resolve_dataset_source(uri)
    except MlflowException:
        # Schemes MLflow has no resolver for (minio://, hf://) are still worth recording as a location.
        source = HTTPDatasetSource(uri)
    # The tracking store keeps at most 36 characters of a dataset digest.
    digest = str(manifest.get("content_digest", ""))[:36] or None
    dataset = MetaDataset(source, name=name, digest=digest, schema=Schema([ColSpec(DataType.string, "text")]))
    mlflow.log_input(dataset, context=context)
    if also_on:
        # mlflow.log_input only logs to the active run; this is the same request for another run.
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        MlflowClient().log_inputs(also_on, datasets=[entity])
