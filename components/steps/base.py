"""What every step shares: where it logs (`RunRef`), opening its MLflow run, and reading dataset manifests.

Every step that talks to MLflow opens its own run through `step_run`: a child of the pipeline's parent run when
`RunRef.parent_run_id` is set, otherwise a run of its own (a step started alone with `mlflow run . -e <step>`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from components.params import PipelineParams
from components.steps import tracking

__all__ = ["REUSED_TAG", "RunRef", "default_run_name", "log_config", "read_manifest", "reuse_or_run", "start",
           "step_run", "text_digest"]

REUSE_RESULT = "result.json"
# On a step's run whose outputs came from `reuse_or_run`: the entry they came from.
REUSED_TAG = "neuroq.reused"


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
    name = run_name or default_run_name(params)
    return RunRef(uri, tracking.start_pipeline_run(uri, params.experiment_name, name, params.to_dict(), tags))


def default_run_name(params: PipelineParams) -> str:
    """What a run trained, on what, and when: `layered-2x64-bundled-1206-0830`, so the runs table reads by itself."""
    sources = "+".join(params.sources)
    return f"{params.mode}-{params.n_layer}x{params.n_embd}-{sources}-{time.strftime('%m%d-%H%M')}"


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


def reuse_or_run(reuse_dir: str, step: str, key: Mapping[str, Any], outputs: Mapping[str, Path],
                 compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """`compute()` once per `key`: its `outputs` (files or folders) and result are kept under `reuse_dir` and
    copied back when a later run asks with the same key. Returns the result and the reused entry's key ("" when
    it was computed, or when `reuse_dir` is empty).

    kfp.local's own cache cannot do this for steps that log to MLflow: their inputs include the pipeline's parent
    run, which is new every run. The key is made of content digests, configs and the code version instead, so any
    change of data, knobs or code computes again. An entry appears whole or not at all (written aside, renamed).
    """
    if not reuse_dir:
        return compute(), ""
    # The code that computes the step is part of what decides its result.
    identity = {"step": step, "code_version": tracking.code_version(), **key}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    entry = Path(reuse_dir) / step / digest
    if (entry / REUSE_RESULT).is_file():
        for name, target in outputs.items():
            _copy(entry / name, target)
        return json.loads((entry / REUSE_RESULT).read_text(encoding="utf-8")), digest
    result = compute()
    staging = entry.with_name(f".{digest}.{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    for name, source in outputs.items():
        _copy(source, staging / name)
    (staging / REUSE_RESULT).write_text(json.dumps(result), encoding="utf-8")
    try:
        staging.rename(entry)
    except OSError:  # another run stored the same entry first: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    return result, ""


def _copy(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)

