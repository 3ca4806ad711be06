"""The `preset` pipeline knob: the GPU sizes (`base`, `large`) train through the pipeline's train step on CPU."""

from __future__ import annotations

import pytest

from components.params import PipelineParams
from components.steps import base, data, training
from neuroq.checkpoint import load_checkpoint
from neuroq.model import NeuroQConfig
from tests.pipeline.conftest import TINY


def test_a_preset_replaces_the_size_knobs_and_seq_length_stays_the_block_size():
    params = PipelineParams(**{**TINY, "preset": "large", "mode": "brain"})
    config = params.train_config("out", vocab_size=1234)
    assert config.model == NeuroQConfig.preset("large", mode="brain", vocab_size=1234, dropout=params.dropout)
    assert config.block_size == TINY["seq_length"]


@pytest.mark.slow
def test_the_base_preset_trains_a_few_steps_through_the_train_step(tmp_path):
    # Blocks of 32 tokens out of the preset's 1024-token context keep the steps to seconds on 2 CPU cores.
    params = PipelineParams(**{**TINY, "preset": "base", "mode": "layered", "experiment_name": "preset"}, max_steps=2)
    data.ingest_hf(params, str(tmp_path / "hf"))
    run = base.start(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    data.merge_dedup_split(params, run, [str(tmp_path / "hf")], str(tmp_path / "train"), str(tmp_path / "val"))
    training.train_tokenizer(params, run, str(tmp_path / "train"), str(tmp_path / "tokenizer.model"))
    summary = training.train_neuroq(params, run, str(tmp_path / "train"), str(tmp_path / "val"),
                                    str(tmp_path / "tokenizer.model"), str(tmp_path / "model"))

    assert summary["steps"] == 2 and summary["final_val_loss"] > 0
    model = load_checkpoint(tmp_path / "model").model
    assert model.config == params.model_config(model.config.vocab_size)
    assert model.config.max_seq_len == 1024 and model.num_params() == summary["parameters"]
