"""A NeuroQ with every model option on (rotary positions, RMSNorm, tied embeddings, zero-initialised residual
writes, a logit soft-cap) logs, registers and serves through the generation pyfunc, decoding what the checkpoint
decodes without a KV cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch

from neuroq.checkpoint import load_checkpoint, save_checkpoint
from neuroq.generate import generate_ids
from serving.generation.log import log_neuroq_model
from tests.support.neuroq_checkpoint import save_tiny_checkpoint

ALL_ON = dict(mode="layered", position="rope", norm="rmsnorm", tie_embeddings=True, zero_init_residual=True,
              logit_softcap=30.0)


def options_checkpoint(folder: Path) -> Path:
    """The tiny checkpoint with every option on; its zero residual writes are then drawn as a trained model's
    would be, or every block would be the identity and rotary positions would change nothing."""
    path = save_tiny_checkpoint(folder, **ALL_ON)
    loaded = load_checkpoint(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in loaded.model.blocks:
            for linear in (block.attn.proj, block.ffn.proj):
                linear.weight.normal_(std=0.05)
            block.qbnn.layer2.norm.weight.fill_(1.0)
    return save_checkpoint(path, loaded.model, loaded.tokenizer)


def test_a_model_with_every_option_on_serves_through_the_generation_pyfunc(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = options_checkpoint(tmp_path / "checkpoint")
    monkeypatch.setenv("NEUROQ_SERVING_SESSION_DIR", str(tmp_path / "sessions"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("options", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_neuroq_model(checkpoint, registered_model_name="neuroq-options")
        pyfunc = mlflow.pyfunc.load_model(f"models:/neuroq-options/{info.registered_model_version}")
    finally:
        mlflow.set_tracking_uri(previous)

    body = {"prompt": ["こんにちは", "今日はいい天気ですね"], "max_tokens": 12, "temperature": 0,
            "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    served = [choice["text"] for choice in pyfunc.predict(body)["choices"]]

    reference = load_checkpoint(checkpoint)
    assert reference.config.position == "rope" and reference.model.pos_emb is None
    config = pyfunc.unwrap_python_model().parse(body).config
    ids = reference.tokenizer.encode_batch(body["prompt"], add_bos=True)
    uncached = generate_ids(reference.model, ids, replace(config, use_cache=False), decode=reference.tokenizer.decode)
    assert served == [samples[0].text for samples in uncached]
    assert any(served), "the greedy completions are empty: the comparison would say nothing"
