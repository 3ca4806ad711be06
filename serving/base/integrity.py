"""What a logged serving model carries, and the check at start-up that it still carries exactly that.

Every served pyfunc (NeuroQ generation, Ruri embeddings and rerank) is logged with its artifact files' sha256 and
sizes in the MLmodel metadata (``metadata.integrity``), by ``log_served_model`` (log_model.py).
``ServingModel.load_context`` calls ``verify_logged_model`` before anything is loaded, so ``mlflow models serve``
exits at start-up with a message naming the file when one is missing, a Git LFS pointer, truncated or altered
(a bit flip, an edited config), instead of serving what a damaged file computes.

    metadata:
      integrity:
        algorithm: sha256
        artifacts:                      # pyfunc artifact name -> its files, by path under the model's artifacts/
          weights: {model.safetensors: {sha256: ..., size: 58123456}}
          model: {model/config.json: {...}, model/1_Pooling/config.json: {...}, ...}   # a folder artifact

MLflow copies an artifact into ``artifacts/<its base name>``, so recorded paths start with that name and the
check resolves them against the folder holding ``context.artifacts[name]``. A folder artifact must also hold no
file that was not recorded: sentence-transformers and transformers pick up optional files by name (an adapter
config, a second weights file), so an extra file can change what the model computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from neuroq.checkpoint import is_lfs_pointer
from neuroq.errors import CheckpointError

__all__ = ["METADATA_KEY", "ArtifactIntegrityError", "integrity_metadata", "verify_logged_model"]

METADATA_KEY = "integrity"
_ALGORITHM = "sha256"


class ArtifactIntegrityError(CheckpointError):
    """A logged model's artifact differs from what was recorded when it was logged; the message names the file."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]


def integrity_metadata(artifacts: Mapping[str, str | Path]) -> dict[str, Any]:
    """``{"integrity": ...}`` for ``log_model(metadata=...)``: the digests of the files of ``artifacts``
    (the same mapping, artifact name -> local file or folder, that goes to ``log_model(artifacts=...)``)."""
    recorded = {}
    for name, source in artifacts.items():
        source = Path(source)
        recorded[name] = {
            (Path(source.name) / path.relative_to(source)).as_posix() if source.is_dir() else source.name:
                {"sha256": _sha256(path), "size": path.stat().st_size}
            for path in _files(source)
        }
    return {METADATA_KEY: {"algorithm": _ALGORITHM, "artifacts": recorded}}


def verify_logged_model(context) -> None:
    """Check every artifact file of the model being loaded against its MLmodel's ``metadata.integrity``.

    Raises ArtifactIntegrityError naming the file and what to do. Sizes are compared before digests, so the
    common failure, an interrupted download or copy, is called by its name.
    """
    model_dir = logged_model_dir(context)
    recorded = (mlflow.models.Model.load(str(model_dir)).metadata or {}).get(METADATA_KEY)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("artifacts"), dict):
        raise ArtifactIntegrityError(
            f"{model_dir} has no metadata.{METADATA_KEY}: it was not logged by serving.ruri.register.register or "
            "serving.generation.log.log_neuroq_model, so its files cannot be verified; log it again with those"
        )
    artifacts = recorded["artifacts"]
    unrecorded = sorted(set(context.artifacts) - set(artifacts))
    if unrecorded:
        raise ArtifactIntegrityError(f"model artifact {unrecorded[0]!r} of {model_dir} has no recorded digests")
    for name, files in artifacts.items():
        if name not in context.artifacts:
            raise ArtifactIntegrityError(f"model artifact {name!r} is missing from the logged model {model_dir}")
        local = Path(context.artifacts[name])
        root = local.parent
        for relative, expected in files.items():
            _verify_file(root / relative, expected)
        if local.is_dir():
            unexpected = [p for p in _files(local) if p.relative_to(root).as_posix() not in files]
            if unexpected:
                raise ArtifactIntegrityError(
                    f"model artifact {unexpected[0]} was not in the model when it was logged; an added file can "
                    "change what the model loads: download the model again"
                )


def _verify_file(path: Path, expected: Mapping[str, Any]) -> None:
    if not path.is_file():
        raise ArtifactIntegrityError(f"model artifact {path} is missing: download the model again")
    size = path.stat().st_size
    if is_lfs_pointer(path):
        raise ArtifactIntegrityError(
            f"model artifact {path} is a Git LFS pointer ({size} bytes), not the {expected['size']:,}-byte "
            "file that was logged: run `git lfs pull` where the model folder came from, or serve the model "
            "from the registry (models:/NAME@champion)"
        )
    if size != expected["size"]:
        raise ArtifactIntegrityError(
            f"model artifact {path} is truncated or corrupt: {size:,} bytes, but {expected['size']:,} were "
            "logged (an interrupted download or copy?); download the model again"
        )
    if _sha256(path) != expected["sha256"]:
        raise ArtifactIntegrityError(
            f"model artifact {path} is corrupt: its sha256 differs from the one recorded when the model was "
            "logged; download the model again, and check the artifact store if it persists"
        )


def logged_model_dir(context) -> Path:
    """The logged model's folder (holding MLmodel), found from an artifact path: artifacts/<file or folder>."""
    for path in map(Path, context.artifacts.values()):
        for parent in path.parents[:3]:
            if (parent / "MLmodel").is_file():
                return parent
    raise ArtifactIntegrityError(
        f"cannot find the MLmodel file above the artifacts {sorted(context.artifacts.values())}"
    )
