"""NeuroQ: a small Japanese decoder-only language model with QBNN terms, and the tools to train and use it.

    from neuroq import NeuroQTokenizer, NeuroQ, NeuroQConfig, TrainConfig, train, generate, load_checkpoint

Names are imported on first use (PEP 562), so ``import neuroq`` stays cheap (no torch, no sentencepiece) for
code that only needs the errors or the CLI's ``--help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "NeuroQError": "neuroq.errors",
    "ConfigError": "neuroq.errors",
    "TokenizerError": "neuroq.errors",
    "CheckpointError": "neuroq.errors",
    # tokenizer
    "NeuroQTokenizer": "neuroq.tokenizer",
    "TokenizerConfig": "neuroq.tokenizer",
    # model and generation
    "NeuroQ": "neuroq.model",
    "NeuroQConfig": "neuroq.model",
    "GenerationConfig": "neuroq.generate",
    "Sample": "neuroq.generate",
    "generate": "neuroq.generate",
    # data
    "read_texts": "neuroq.data",
    "split_documents": "neuroq.data",
    "PackedBlocks": "neuroq.shards",
    "write_token_shards": "neuroq.shards",
    "bundled_dialogues": "neuroq.corpus",
    # training, checkpoints, evaluation
    "TrainConfig": "neuroq.train",
    "TrainResult": "neuroq.train",
    "train": "neuroq.train",
    "get_lr": "neuroq.train",
    "save_checkpoint": "neuroq.checkpoint",
    "load_checkpoint": "neuroq.checkpoint",
    "LoadedCheckpoint": "neuroq.checkpoint",
    "evaluate_blocks": "neuroq.evaluate",
    "score_text": "neuroq.evaluate",
    "generation_stats": "neuroq.evaluate",
    "unigram_bits_per_char": "neuroq.evaluate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuroq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from neuroq.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
    from neuroq.corpus import bundled_dialogues
    from neuroq.data import read_texts, split_documents
    from neuroq.errors import CheckpointError, ConfigError, NeuroQError, TokenizerError
    from neuroq.evaluate import evaluate_blocks, generation_stats, score_text, unigram_bits_per_char
    from neuroq.generate import GenerationConfig, Sample, generate
    from neuroq.model import NeuroQ, NeuroQConfig
    from neuroq.shards import PackedBlocks, write_token_shards
    from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
    from neuroq.train import TrainConfig, TrainResult, get_lr, train
