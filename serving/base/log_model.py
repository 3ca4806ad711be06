"""How every served model is logged to MLflow, so that all three load and serve the same way.

- As code (MLflow's models-from-code), never as a cloudpickle: the pyfunc is its family's ``entry.py`` module,
  which only calls ``mlflow.models.set_model``; what loads is the class in the code the model carries.
- With its artifact files' sha256 and sizes in ``metadata.integrity`` (integrity.py), checked at every load.
- With the ``neuroq`` and ``serving`` packages as ``code_paths`` (``stage_code``): ``mlflow models serve
  --env-manager local`` then needs only the pinned requirements installed, not this project, and a later change
  to the repository cannot change what an old version computes.
- Without a signature: MLflow would then reject the raw OpenAI / Cohere bodies.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow

from serving.base.integrity import integrity_metadata

__all__ = ["log_served_model", "stage_code"]


def log_served_model(
    entry: str,
    *,
    name: str,
    artifacts: Mapping[str, str],
    pip_requirements: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc whose models-from-code entry is module ``entry`` (e.g. ``serving.embeddings.entry``).

    ``artifacts`` (artifact name -> local file or folder) are recorded with their digests beside ``metadata``.
    """
    with tempfile.TemporaryDirectory(prefix="serving-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            # The file, found without importing it: importing would run its set_model.
            python_model=importlib.util.find_spec(entry).origin,
            artifacts=dict(artifacts),
            model_config=dict(model_config) if model_config is not None else None,
            code_paths=stage_code(Path(tmp)),
            pip_requirements=list(pip_requirements),
            metadata={**(metadata or {}), **integrity_metadata(artifacts)},
            registered_model_name=registered_model_name,
        )


def stage_code(root: Path) -> list[str]:
    """Copies of the neuroq and serving packages without caches, for ``log_model(code_paths=...)``.

    neuroq goes in too because integrity.py (run by every served model) uses its checkpoint checks.
    """
    import neuroq
    import serving

    staged = []
    for package in (neuroq, serving):
        source = Path(package.__file__).parent
        target = root / source.name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        staged.append(str(target))
    return staged
