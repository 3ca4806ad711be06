"""The Ruri pyfuncs record every model file's digest when logged and refuse to load, or to serve, a damaged copy."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from serving.base.integrity import ArtifactIntegrityError
from tests.serving.helpers import LFS_POINTER, flip_a_byte, truncate
from tests.support.mlflow_serve import ModelServer


@pytest.fixture(scope="module")
def downloaded(store, registered_embed, registered_rerank, tmp_path_factory) -> dict[str, Path]:
    """Pristine local copies of both registered models, to damage copies of."""
    root = tmp_path_factory.mktemp("downloaded")
    # Module-scoped: set up before the per-test tracking-URI fixture, so the store is named here.
    return {
        task: Path(mlflow.artifacts.download_artifacts(registered.model_uri, dst_path=str(root / task),
                                                       tracking_uri=store.tracking_uri,
                                                       registry_uri=store.tracking_uri))
        for task, registered in (("embed", registered_embed), ("rerank", registered_rerank))
    }


@pytest.fixture(params=["embed", "rerank"])
def model_copy(request, downloaded, tmp_path) -> Path:
    return Path(shutil.copytree(downloaded[request.param], tmp_path / request.param))


def test_every_file_of_the_model_folder_is_recorded(downloaded, tiny_bi_encoder_dir):
    recorded = yaml.safe_load((downloaded["embed"] / "MLmodel").read_text())["metadata"]["integrity"]
    files = recorded["artifacts"]["model"]

    model_dir = downloaded["embed"] / "artifacts" / "model"
    assert set(files) == {f"model/{p.relative_to(model_dir).as_posix()}" for p in model_dir.rglob("*") if p.is_file()}
    weights = (model_dir / "model.safetensors").read_bytes()
    assert files["model/model.safetensors"] == {"sha256": hashlib.sha256(weights).hexdigest(), "size": len(weights)}
    assert "model/1_Pooling/config.json" in files  # files in sub-folders count too


def test_the_model_carries_the_code_it_was_logged_with(downloaded):
    code = downloaded["rerank"] / "code"
    assert (code / "serving" / "base" / "integrity.py").is_file() and (code / "neuroq" / "checkpoint.py").is_file()
    assert not list(code.rglob("__pycache__"))


def test_an_intact_copy_loads(model_copy):
    assert mlflow.pyfunc.load_model(str(model_copy)) is not None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: flip_a_byte(d / "model.safetensors"), r"model/model\.safetensors is corrupt: its sha256 differs"),
        (lambda d: truncate(d / "tokenizer.json"), r"model/tokenizer\.json is truncated or corrupt: 1,000 bytes"),
        (lambda d: (d / "model.safetensors").write_text(LFS_POINTER), r"model\.safetensors is a Git LFS pointer"),
        (lambda d: (d / "config.json").unlink(), r"model/config\.json is missing"),
        (lambda d: (d / "adapter_config.json").write_text("{}"),
         r"model/adapter_config\.json was not in the model when it was logged"),
    ],
    ids=["bit-flip", "truncated", "lfs-pointer", "missing", "added"],
)
def test_a_damaged_copy_is_refused_naming_the_file(model_copy, damage, message):
    damage(model_copy / "artifacts" / "model")
    with pytest.raises(ArtifactIntegrityError, match=message):
        mlflow.pyfunc.load_model(str(model_copy))


def test_a_model_logged_without_digests_is_refused(downloaded, tmp_path):
    copy = Path(shutil.copytree(downloaded["embed"], tmp_path / "embed"))
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    del mlmodel["metadata"]["integrity"]
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ArtifactIntegrityError, match="has no metadata.integrity"):
        mlflow.pyfunc.load_model(str(copy))


@pytest.mark.slow
def test_mlflow_models_serve_exits_at_start_up_on_a_damaged_copy(downloaded, store, tmp_path):
    """Both servers start together (most of a start is importing)."""
    damaged = {task: Path(shutil.copytree(downloaded[task], tmp_path / task)) for task in downloaded}
    flip_a_byte(damaged["embed"] / "artifacts" / "model" / "model.safetensors")
    (damaged["rerank"] / "artifacts" / "model" / "model.safetensors").write_text(LFS_POINTER)
    servers = {task: ModelServer(str(path), store.tracking_uri, log_dir=tmp_path) for task, path in damaged.items()}
    try:
        for server in servers.values():
            server.start()
        for task, expected in (("embed", "model.safetensors is corrupt: its sha256 differs"),
                               ("rerank", "model.safetensors is a Git LFS pointer")):
            with pytest.raises(RuntimeError, match="exited") as failure:
                servers[task].wait_ready(timeout=180)
            assert "ArtifactIntegrityError" in str(failure.value) and expected in str(failure.value)
    finally:
        for server in servers.values():
            server.stop()
