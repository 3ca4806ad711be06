"""What log_neuroq_model records, and how loading refuses artifacts that differ from it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from neuroq.errors import CheckpointError
from serving.base.integrity import ArtifactIntegrityError
from serving.generation.log import log_neuroq_model
from tests.serving.helpers import LFS_POINTER, flip_a_byte, truncate
from tests.support.mlflow_serve import ModelServer


@pytest.fixture(scope="module")
def downloaded(registry, tmp_path_factory) -> Path:
    """A pristine local copy of the registered model, to damage copies of."""
    return Path(mlflow.artifacts.download_artifacts(f"models:/{registry.name}/{registry.version}",
                                                    dst_path=str(tmp_path_factory.mktemp("downloaded"))))


@pytest.fixture
def model_copy(downloaded, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEUROQ_SERVING_SESSION_DIR", str(tmp_path / "sessions"))
    return Path(shutil.copytree(downloaded, tmp_path / "model"))


def test_logged_model_has_no_signature_and_records_each_artifact_digest(downloaded, checkpoint_dir):
    mlmodel = yaml.safe_load((downloaded / "MLmodel").read_text())
    assert "signature" not in mlmodel, "a signature would make MLflow reject the raw OpenAI / handler bodies"
    recorded = mlmodel["metadata"]["integrity"]
    assert recorded["algorithm"] == "sha256"
    for key, file in (("weights", "model.safetensors"), ("config", "config.json"), ("tokenizer", "tokenizer.model")):
        data = (checkpoint_dir / file).read_bytes()
        assert recorded["artifacts"][key] == {file: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    assert "training_state.pt" not in {p.name for p in (downloaded / "artifacts").iterdir()}


def test_logged_model_carries_its_code_and_pins_torch_without_a_local_label(downloaded):
    assert (downloaded / "code" / "neuroq" / "generate.py").is_file()
    assert (downloaded / "code" / "serving" / "generation" / "model.py").is_file()
    requirements = (downloaded / "requirements.txt").read_text().split()
    torch_pin = next(r for r in requirements if r.startswith("torch=="))
    assert "+" not in torch_pin


def test_intact_copy_loads(model_copy):
    model = mlflow.pyfunc.load_model(str(model_copy))
    assert model.predict({"input": {"action": "health"}})["status"] == "healthy"


def test_loading_hashes_each_artifact_file_once(model_copy, monkeypatch):
    """The artifact digests are checked at load; the checkpoint's own sha256 check is not run on the same bytes again."""
    calls = []
    real = hashlib.sha256

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    model = mlflow.pyfunc.load_model(str(model_copy))
    assert model.predict({"input": {"action": "health"}})["status"] == "healthy"
    assert len(calls) == len(("model.safetensors", "config.json", "tokenizer.model"))


def test_flipped_bytes_in_the_weights_are_refused(model_copy):
    flip_a_byte(model_copy / "artifacts" / "model.safetensors")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.safetensors is corrupt: its sha256 differs"):
        mlflow.pyfunc.load_model(str(model_copy))


def test_git_lfs_pointer_instead_of_the_weights_is_refused(model_copy):
    (model_copy / "artifacts" / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(ArtifactIntegrityError, match=r"is a Git LFS pointer \(\d+ bytes\), not the [\d,]+-byte file"):
        mlflow.pyfunc.load_model(str(model_copy))


def test_truncated_tokenizer_is_refused(model_copy):
    truncate(model_copy / "artifacts" / "tokenizer.model", 1000)
    with pytest.raises(ArtifactIntegrityError, match=r"tokenizer\.model is truncated or corrupt: 1,000 bytes"):
        mlflow.pyfunc.load_model(str(model_copy))


def test_edited_config_is_refused(model_copy):
    config = model_copy / "artifacts" / "config.json"
    config.write_text(config.read_text().replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(ArtifactIntegrityError, match=r"config\.json is corrupt"):
        mlflow.pyfunc.load_model(str(model_copy))


def test_logging_refuses_a_checkpoint_whose_weights_are_an_lfs_pointer(checkpoint_dir, tmp_path):
    broken = Path(shutil.copytree(checkpoint_dir, tmp_path / "checkpoint"))
    (broken / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        log_neuroq_model(broken)


def test_server_refuses_to_start_on_a_damaged_registered_model(registry, checkpoint_dir, tmp_path):
    with mlflow.start_run(experiment_id=registry.experiment_id):
        info = log_neuroq_model(checkpoint_dir, registered_model_name="neuroq-damaged")
    [stored] = registry.artifact_root.glob(f"**/{info.model_id}/**/artifacts/model.safetensors")
    stored.write_text(LFS_POINTER)
    server = ModelServer("models:/neuroq-damaged/1", registry.tracking_uri, log_dir=tmp_path).start()
    try:
        with pytest.raises(RuntimeError, match="exited") as failure:
            server.wait_ready(timeout=120)
        assert "is a Git LFS pointer" in str(failure.value)
    finally:
        server.stop()
