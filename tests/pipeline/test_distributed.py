"""The train_neuroq step with gpus=2: the real launch path, `torchrun --standalone --nproc-per-node 2` on this
machine's CPUs (gloo), trains exactly as one process with the doubled batch and logs once, from rank 0."""

from __future__ import annotations

import dataclasses

import pytest
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps import base, data, training
from neuroq.checkpoint import load_checkpoint
from tests.pipeline.conftest import TINY

pytestmark = pytest.mark.slow

STEPS = 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The bundled corpus, split and tokenized, under one pipeline parent run in a sqlite store."""
    root = tmp_path_factory.mktemp("distributed")
    params = PipelineParams(**{**TINY, "experiment_name": "distributed"}, max_steps=STEPS, dropout=0.0)
    data.ingest_hf(params, str(root / "hf"))
    run = base.start(params, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    data.merge_dedup_split(params, run, [str(root / "hf")], str(root / "train"), str(root / "val"))
    training.train_tokenizer(params, run, str(root / "train"), str(root / "tokenizer.model"))
    return root, params, run


def train_step(prepared, name: str, **changes):
    root, params, run = prepared
    params = dataclasses.replace(params, **changes)
    summary = training.train_neuroq(params, run, str(root / "train"), str(root / "val"), str(root / "tokenizer.model"),
                                 str(root / name))
    client = MlflowClient(run.tracking_uri)
    [child] = [r for r in client.search_runs(client.get_experiment_by_name("distributed").experiment_id,
                                             filter_string="tags.`neuroq.step` = 'train_neuroq'")
               if r.data.params.get("train_processes") == str(params.processes)]
    losses = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "train_loss")]
    return summary, child, losses


def test_two_torchrun_processes_train_like_one_process_with_the_doubled_batch(prepared):
    single, _, single_losses = train_step(prepared, "single", gpus=1, batch_size=8)
    ddp, ddp_run, ddp_losses = train_step(prepared, "ddp", gpus=2, batch_size=4)

    assert ddp_run.data.params["train_processes"] == "2"
    # Rank 0 alone logs: one value per logged step, and the same values as the single process.
    assert [step for step, _ in ddp_losses] == [step for step, _ in single_losses] == list(range(1, STEPS + 1))
    assert [loss for _, loss in ddp_losses] == pytest.approx([loss for _, loss in single_losses], abs=1e-4)
    assert ddp["tokens_seen"] == single["tokens_seen"] == STEPS * 8 * TINY["seq_length"]
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], abs=1e-4)
    root = prepared[0]
    assert load_checkpoint(root / "ddp").extra["step"] == STEPS
    assert not (root / "ddp.work").exists()  # token shards and the torchrun spec are scratch
