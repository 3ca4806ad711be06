"""What every step shares: where it logs (`RunRef`), opening its MLflow run, and reading dataset manifests.

Every step that talks to MLflow opens its own run through `step_run`: a child of the pipeline's parent run when
`RunRef.parent_run_id` is set, otherwise a run of its own (a step started alone with `mlflow run . -e <step>`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from components.params import PipelineParams
from components.steps import tracking

__all__ = ["RunRef", "log_config", "read_manifest", "start", "step_run", "text_digest"]


@dataclass(frozen=True)
class RunRef:
    """Where a step logs: the tracking URI, and the pipeline's parent run ("" for a standalone step run)."""

    tracking_uri: str
    parent_run_id: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def start(params: PipelineParams, *, tracking_uri: str = "", run_name: str = "", parent_run_id: str = "") -> RunRef:
    """Open the pipeline's parent run and log every pipeline parameter on it.

    With `parent_run_id` the pipeline adopts an existing run instead (the run `mlflow run .` created for the
    `main` entry point), logging only the parameters that run does not have yet: MLflow params are write-once,
    and `-P learning_rate=1e-3` was already logged by `mlflow run` in its own spelling.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tags = {"code_version": tracking.code_version(), "data_sources": params.data_sources}
    if parent_run_id:
        tracking.adopt_pipeline_run(uri, parent_run_id, params.to_dict(), tags)
        return RunRef(uri, parent_run_id)
    return RunRef(uri, tracking.start_pipeline_run(uri, params.experiment_name, run_name, params.to_dict(), tags))


def step_run(run: RunRef, params: PipelineParams, name: str, *, weights: str = "",
             rerun: str = "rerun this step once MLflow answers again, without retraining"):
    """The step's MLflow run; `weights` is a checkpoint the step reads or writes, named if MLflow goes down, with
    `rerun`, what to do about it."""
    if params.num_threads:
        import torch

        torch.set_num_threads(params.num_threads)
    kept = (lambda: _weights_kept(weights, rerun)) if weights else None
    return tracking.step_run(run.tracking_uri, run.parent_run_id, name, params.experiment_name, kept=kept)


def _weights_kept(checkpoint_dir: str, rerun: str) -> str:
    """What to tell whoever reads a "MLflow is down" error about the trained weights (checked now, not assumed)."""
    from neuroq.checkpoint import verify_checkpoint
    from neuroq.errors import CheckpointError

    if not Path(checkpoint_dir).exists():
        return f"No trained weights had been written to {checkpoint_dir} yet."
    try:
        verify_checkpoint(checkpoint_dir)
    except CheckpointError as error:
        return f"The checkpoint at {checkpoint_dir} does not verify either: {error}"
    return (f"The trained weights are intact in {checkpoint_dir} (every file matches the sha256 in its config.json), "
            f"the train_neuroq step's output artifact: {rerun}.")


def log_config(prefix: str, config: Mapping[str, Any]) -> None:
    """Log a nested config as params of the active run: MLflow params are flat, so nested keys are dotted."""
    flat: dict[str, Any] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for sub, item in value.items():
                walk(f"{key}.{sub}", item)
        else:
            flat[key] = value

    walk(prefix, config)
    mlflow.log_params(flat)


def text_digest(texts: Iterable[str]) -> str:
    """Content digest of a set of documents, independent of their order (the identity of a validation set)."""
    hashes = sorted(hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts)
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A dataset folder's manifest; {} for a folder from elsewhere that has none."""
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
