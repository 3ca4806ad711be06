"""A tiny untrained NeuroQ checkpoint (tokenizer trained on the bundled dialogues, random weights): what the serving
tests register and serve to check plumbing, not text quality."""

from __future__ import annotations

from pathlib import Path

import torch

from neuroq.checkpoint import save_checkpoint
from neuroq.corpus import bundled_dialogues
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig

__all__ = ["save_tiny_checkpoint"]


def save_tiny_checkpoint(folder: Path, **config) -> Path:
    """`config` overrides fields of the "tiny" preset (e.g. max_seq_len)."""
    tokenizer = NeuroQTokenizer.train(
        bundled_dialogues(),
        TokenizerConfig(vocab_size=1000, character_coverage=0.98, hard_vocab_limit=False, num_threads=1),
    )
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig.preset("tiny", vocab_size=tokenizer.vocab_size, **config))
    return save_checkpoint(folder, model, tokenizer)
