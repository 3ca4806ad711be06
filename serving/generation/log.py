"""Log a NeuroQ checkpoint as the generation pyfunc (``log_neuroq_model``), the way base/log_model.py logs
every served model.

The checkpoint's three files are the artifacts ``weights``, ``config`` and ``tokenizer``; their sha256 and sizes go
into the MLmodel metadata (``metadata.integrity``), and ``load_context`` refuses to serve when a file is a Git LFS
pointer, not of the logged size, or has another digest. The pinned requirements are the packages the pyfunc
imports (mlflow, torch, sentencepiece, safetensors, numpy, pandas, tqdm); torch is pinned without its local
label (+cpu), so a GPU host installs its own build.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow

from neuroq.checkpoint import load_checkpoint
from neuroq.errors import CheckpointError
from serving.base.log_model import log_served_model
from serving.generation.model import ARTIFACT_FILES

__all__ = ["default_requirements", "log_neuroq_model"]

logger = logging.getLogger(__name__)

_REQUIREMENTS = ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas", "tqdm")


def log_neuroq_model(
    checkpoint_dir: str | os.PathLike[str],
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log a NeuroQ checkpoint directory as the generation pyfunc (in the active run, if any); returns ModelInfo.

    The checkpoint is copied aside and loaded once before anything is logged, so a Git LFS pointer, a truncated
    file or weights of another architecture fail here (CheckpointError) instead of reaching the registry. With
    ``registered_model_name`` the model is also registered as a new version (aliases are the caller's choice).
    ``metadata`` is merged into the MLmodel metadata beside the ``neuroq`` entry this function writes.
    ``pip_requirements`` replaces the default pins of the packages the pyfunc imports.
    """
    source = Path(checkpoint_dir)
    with tempfile.TemporaryDirectory(prefix="neuroq-log-") as tmp:
        staged = Path(tmp) / "checkpoint"
        staged.mkdir()
        for filename in ARTIFACT_FILES.values():
            if not (source / filename).is_file():
                raise CheckpointError(f"{source} is not a NeuroQ checkpoint: {filename} is missing")
            shutil.copyfile(source / filename, staged / filename)
        # What is verified and hashed is the staged copy, exactly the bytes MLflow uploads.
        loaded = load_checkpoint(staged)
        neuroq_metadata = {
            "mode": loaded.config.mode,
            "vocab_size": loaded.tokenizer.vocab_size,
            "max_seq_len": loaded.config.max_seq_len,
            "parameters": loaded.model.num_params(non_embedding=False),
            "registered_model_name": registered_model_name,
        }
        info = log_served_model(
            "serving.generation.entry",
            name=name,
            artifacts={key: str(staged / filename) for key, filename in ARTIFACT_FILES.items()},
            pip_requirements=list(pip_requirements) if pip_requirements is not None else default_requirements(),
            metadata={**(metadata or {}), "neuroq": neuroq_metadata},
            registered_model_name=registered_model_name,
        )
    logger.info("logged NeuroQ model %s%s", info.model_uri,
                f" as {registered_model_name} version {info.registered_model_version}" if registered_model_name else "")
    return info


def default_requirements() -> list[str]:
    # A local version label (torch 2.13.0+cpu) is not on PyPI: pin the release and let each host pick its build.
    return [f"{package}=={installed_version(package).split('+')[0]}" for package in _REQUIREMENTS]
