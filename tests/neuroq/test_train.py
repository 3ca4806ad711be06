"""Training: LR schedule, config validation, deterministic data order, exact resume, accumulation, DDP, learning."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from neuroq.checkpoint import load_checkpoint
from neuroq.errors import ConfigError
from neuroq.evaluate import score_text, unigram_bits_per_char
from neuroq.model import NeuroQConfig
from neuroq.train import StepBatchSampler, TrainConfig, get_lr, train
from tests.support.training import BLOCK, blocks, corpus, tiny_config  # noqa: F401 (corpus is a fixture)


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.losses: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self.stop_at = stop_at

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if "train_loss" in metrics:
            self.losses[step] = metrics["train_loss"]
            assert set(metrics) >= {"train_loss", "lr", "tokens_per_s", "tokens_seen", "grad_norm"}
        if "val_loss" in metrics:
            self.val[step] = metrics["val_loss"]
        if step == self.stop_at:
            raise KeyboardInterrupt(f"killed at step {step}")


# ------------------------------------------------------------------------------------------------ schedule


def test_lr_warms_up_linearly_then_follows_a_cosine_down_to_min_lr():
    cfg = TrainConfig(model=NeuroQConfig.preset("tiny"), max_steps=111, warmup_steps=10, lr=1e-3, min_lr=1e-4)

    assert get_lr(0, cfg) == pytest.approx(1e-3 / 11)
    assert get_lr(4, cfg) == pytest.approx(5e-3 / 11)
    assert get_lr(10, cfg) == pytest.approx(1e-3)  # the peak, at the end of warmup
    assert get_lr(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the cosine
    assert get_lr(110, cfg) == pytest.approx(1e-4)  # the last step ends on min_lr
    after_warmup = [get_lr(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


def test_min_lr_defaults_to_half_of_lr_and_no_warmup_starts_at_peak():
    cfg = TrainConfig(model=NeuroQConfig.preset("tiny"), max_steps=10, warmup_steps=0, lr=2e-3)

    assert cfg.min_lr == pytest.approx(1e-3)
    assert get_lr(0, cfg) == pytest.approx(2e-3)
    assert get_lr(9, cfg) == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 0), ("max_steps", -1), ("lr", 0.0), ("grad_clip", -1.0), ("dtype", "float16"),
     ("device", "tpu9"), ("eval_batches", 0), ("betas", (0.9, 1.5)), ("block_size", 4096), ("seed", 1.5)],
)
def test_invalid_train_config_values_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(model=NeuroQConfig.preset("tiny"), **{field: value})


def test_train_config_round_trips_through_json():
    cfg = TrainConfig(model=NeuroQConfig.preset("brain"), batch_size=3, betas=(0.8, 0.9), eval_batches=None)

    assert TrainConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.block_size == cfg.model.max_seq_len


# ------------------------------------------------------------------------------------------------ data order


def test_every_block_is_seen_once_per_epoch_and_ranks_read_disjoint_blocks():
    n, batch, world = 24, 3, 2
    ranks = [StepBatchSampler(n, batch, seed=5, start_step=0, max_steps=8, rank=r, world_size=world)
             for r in range(world)]
    per_step = [[idx for r in ranks for idx in r.indices(step, 0)] for step in range(8)]

    epoch_0 = [i for step in per_step[:4] for i in step]
    epoch_1 = [i for step in per_step[4:] for i in step]
    assert sorted(epoch_0) == list(range(n)) and sorted(epoch_1) == list(range(n))
    assert epoch_0 != epoch_1  # reshuffled each epoch


def test_the_batches_of_a_step_depend_only_on_seed_step_and_rank():
    full = list(StepBatchSampler(50, 4, seed=1, start_step=0, max_steps=10, grad_accum_steps=2))
    resumed = list(StepBatchSampler(50, 4, seed=1, start_step=6, max_steps=10, grad_accum_steps=2))
    other_seed = list(StepBatchSampler(50, 4, seed=2, start_step=0, max_steps=10, grad_accum_steps=2))

    assert resumed == full[12:]
    assert other_seed != full


# ------------------------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_reports_metrics_and_writes_last_and_final(corpus, tmp_path):
    rec = Recorder()
    cfg = tiny_config(corpus, tmp_path, max_steps=12, eval_interval=6)

    result = train(cfg, blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"], callbacks=[rec])

    assert result.steps == 12 and result.tokens_seen == 12 * 4 * BLOCK
    assert sorted(rec.losses) == list(range(1, 13)) and sorted(rec.val) == [6, 12]
    assert rec.losses[12] < rec.losses[1] - 0.5
    assert result.final_val_loss == rec.val[12] and result.best_val_loss == min(rec.val.values())
    assert result.tokens_per_s > 0
    final = load_checkpoint(result.checkpoint_path)
    assert final.extra["step"] == 12 and final.extra["train_config"]["batch_size"] == 4
    last = load_checkpoint(tmp_path / "last", with_training_state=True)
    assert last.training_state["step"] == 12


@pytest.mark.parametrize("mode", ["layered", "brain"])
def test_resume_after_a_kill_gives_the_same_next_losses_as_an_uninterrupted_run(corpus, tmp_path, mode):
    """Dropout (and brain mode's training noise) are on, so this also checks that the random streams resume."""
    train_blocks, val_blocks, tok = blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"]
    model = {"mode": mode, "dropout": 0.1}
    whole = Recorder()
    train(tiny_config(corpus, tmp_path / "whole", model=model), train_blocks, val_blocks, tok, callbacks=[whole])

    with pytest.raises(KeyboardInterrupt):  # killed at step 6; the last checkpoint is from step 4
        train(tiny_config(corpus, tmp_path / "killed", model=model), train_blocks, val_blocks, tok,
              callbacks=[Recorder(stop_at=6)])
    resumed = Recorder()
    result = train(tiny_config(corpus, tmp_path / "killed", model=model, resume=True), train_blocks, val_blocks, tok,
                   callbacks=[resumed])

    assert sorted(resumed.losses) == [5, 6, 7, 8]
    assert resumed.losses == {s: whole.losses[s] for s in (5, 6, 7, 8)}
    assert resumed.val[8] == whole.val[8]
    assert result.tokens_seen == 8 * 4 * BLOCK
    a = load_checkpoint(tmp_path / "whole" / "final").model.state_dict()
    b = load_checkpoint(tmp_path / "killed" / "final").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_model_config_is_refused(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path, max_steps=2), blocks(corpus, "train"), None, corpus["tokenizer"])

    cfg = tiny_config(corpus, tmp_path, max_steps=4, resume=True, model={"n_layer": 3})
    with pytest.raises(ConfigError, match="another model config.*n_layer: checkpoint 2 vs config 3"):
        train(cfg, blocks(corpus, "train"), None, corpus["tokenizer"])


def test_resume_without_a_checkpoint_starts_from_scratch(corpus, tmp_path):
    result = train(tiny_config(corpus, tmp_path, max_steps=2, resume=True), blocks(corpus, "train"), None,
                   corpus["tokenizer"])

    assert result.steps == 2 and result.final_val_loss is None


def test_gradient_accumulation_equals_one_bigger_batch(corpus, tmp_path):
    model = {"dropout": 0.0}
    small, big = Recorder(), Recorder()
    train(tiny_config(corpus, tmp_path / "a", model=model, batch_size=2, grad_accum_steps=2, max_steps=5),
          blocks(corpus, "train"), None, corpus["tokenizer"], callbacks=[small])
    train(tiny_config(corpus, tmp_path / "b", model=model, batch_size=4, grad_accum_steps=1, max_steps=5),
          blocks(corpus, "train"), None, corpus["tokenizer"], callbacks=[big])

    for step in range(1, 6):
        assert small.losses[step] == pytest.approx(big.losses[step], abs=1e-5)


def test_blocks_of_another_length_than_block_size_are_refused(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path)
    with pytest.raises(ConfigError, match="block_size is 32 but the training blocks have 16 tokens"):
        train(cfg, blocks(corpus, "train", block_size=16), None, corpus["tokenizer"])


def test_a_model_vocabulary_smaller_than_the_tokenizer_is_refused(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path, model={"vocab_size": 500})
    with pytest.raises(ConfigError, match="vocab_size"):
        train(cfg, blocks(corpus, "train"), None, corpus["tokenizer"])


# ------------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from neuroq.shards import PackedBlocks
    from neuroq.model import NeuroQConfig
    from neuroq.tokenizer import NeuroQTokenizer
    from neuroq.train import TrainConfig, train

    root, out, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = TrainConfig(**json.loads(cfg_json))
    losses = {}
    result = train(cfg, PackedBlocks(root + "/train", cfg.block_size), PackedBlocks(root + "/val", cfg.block_size),
                   NeuroQTokenizer.load(root + "/tokenizer.model"),
                   callbacks=[lambda m, s: losses.update({s: m["train_loss"]}) if "train_loss" in m else None])
    if torch.distributed.is_available() and losses:
        json.dump({"losses": losses, "val": result.final_val_loss}, open(out, "w"))
    """
)


@pytest.mark.slow
def test_two_process_ddp_run_matches_one_process_with_the_doubled_batch(corpus, tmp_path):
    model = {"dropout": 0.0}
    ddp_cfg = tiny_config(corpus, tmp_path / "ddp", model=model, batch_size=2, max_steps=5, eval_batches=None,
                          ckpt_interval=0)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(corpus["root"]), str(out), json.dumps(ddp_cfg.to_dict())],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())

    single = Recorder()
    result = train(dataclasses.replace(ddp_cfg, batch_size=4, out_dir=str(tmp_path / "single")),
                   blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"], callbacks=[single])

    assert {int(k): v for k, v in ddp["losses"].items()} == pytest.approx(single.losses, abs=1e-4)
    assert ddp["val"] == pytest.approx(result.final_val_loss, abs=1e-4)
    assert load_checkpoint(tmp_path / "ddp" / "final").extra["step"] == 5  # written once, by rank 0


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_a_couple_of_minutes_on_the_bundled_corpus_beat_a_unigram_model_by_far(corpus, tmp_path):
    """The demo's settings: ~0.5M tokens (~2 minutes on 2 CPU cores), scored on held-out dialogues."""
    tok = corpus["tokenizer"]
    model = NeuroQConfig(mode="layered", vocab_size=tok.vocab_size, n_embd=128, n_ff=256, n_head=4, n_layer=3,
                         max_seq_len=64, dropout=0.3)
    cfg = TrainConfig(model=model, out_dir=str(tmp_path), max_steps=250, batch_size=32, lr=2e-3, warmup_steps=25,
                      eval_interval=0, ckpt_interval=0, log_interval=50, progress=False, device="cpu")
    train_blocks = blocks(corpus, "train", block_size=64)

    result = train(cfg, train_blocks, blocks(corpus, "val", block_size=64), tok)

    scored = score_text(load_checkpoint(result.checkpoint_path).model, tok, corpus["val_docs"])
    unigram = unigram_bits_per_char(train_blocks.tokens(0, train_blocks.n_tokens), corpus["val_docs"], tok)
    assert scored["bits_per_char"] < 0.8 * unigram, (scored, unigram)
    assert math.isfinite(scored["perplexity"])
