"""Tiny NeuroQ training inputs shared by the training tests (tests/neuroq) and the fault tests (tests/faults):
the bundled corpus tokenized into shards once per module (`corpus` fixture), its packed blocks, and a tiny
CPU training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroq.corpus import bundled_dialogues
from neuroq.data import split_documents
from neuroq.model import NeuroQConfig
from neuroq.shards import PackedBlocks, write_token_shards
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from neuroq.train import TrainConfig

BLOCK = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The bundled dialogues split, tokenized and written as shards once for the whole module."""
    root = tmp_path_factory.mktemp("corpus")
    train_docs, val_docs = split_documents(bundled_dialogues(), val_fraction=0.1)
    tokenizer = NeuroQTokenizer.train(train_docs, TokenizerConfig(vocab_size=1500, num_threads=1))
    tokenizer.save(root / "tokenizer.model")
    write_token_shards(train_docs, tokenizer, root / "train")
    write_token_shards(val_docs, tokenizer, root / "val")
    return {"root": root, "tokenizer": tokenizer, "train_docs": train_docs, "val_docs": val_docs}


def blocks(corpus: dict, split: str, block_size: int = BLOCK) -> PackedBlocks:
    return PackedBlocks(corpus["root"] / split, block_size)


def tiny_config(corpus: dict, out_dir: Path, **overrides) -> TrainConfig:
    model_overrides = overrides.pop("model", {})
    model = NeuroQConfig.preset("tiny", **{"vocab_size": corpus["tokenizer"].vocab_size, "max_seq_len": BLOCK,
                                           "dropout": 0.1, **model_overrides})
    defaults = dict(model=model, out_dir=str(out_dir), max_steps=8, batch_size=4, warmup_steps=2, lr=3e-3,
                    eval_interval=4, eval_batches=2, ckpt_interval=4, log_interval=1, progress=False, device="cpu")
    return TrainConfig(**{**defaults, **overrides})
