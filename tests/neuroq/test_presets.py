"""The GPU-size presets `base` and `large`: their documented sizes and shapes, and a few CPU steps through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from neuroq.__main__ import main
from neuroq.checkpoint import load_checkpoint
from neuroq.model import NeuroQ, NeuroQConfig

MODES = ("gpt", "layered", "brain")


def build(preset: str, mode: str) -> NeuroQ:
    # On the meta device: the sizes without allocating up to 280M parameters.
    with torch.device("meta"):
        return NeuroQ(NeuroQConfig.preset(preset, mode=mode))


@pytest.mark.parametrize(("preset", "gpt_params"), [("base", 41_925_632), ("large", 121_560_064)])
def test_gpu_presets_have_the_documented_size_in_every_mode(preset: str, gpt_params: int) -> None:
    gpt, layered, brain = (build(preset, mode) for mode in MODES)
    # ~40M and ~120M non-embedding for the shared skeleton (gpt); the QBNN terms add to it, as documented.
    assert gpt.num_params() == gpt_params
    assert gpt.num_params() < brain.num_params() < layered.num_params() < 2.3 * gpt.num_params()
    for model in (gpt, layered, brain):
        cfg = model.config
        assert cfg.max_seq_len == 1024
        assert cfg.n_embd // cfg.n_head == 64, "head dim 64: layered's folded keys are 128 wide"
        assert cfg.n_embd % 128 == 0 and cfg.n_ff == 4 * cfg.n_embd and 2 * cfg.brain_neurons == cfg.n_embd


def test_gpu_preset_flops_per_token_follow_the_nanogpt_formula_for_gpt() -> None:
    model = build("base", "gpt")
    cfg = model.config
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n)
    assert model.flops_per_token() == 6 * matrices + 12 * cfg.n_layer * cfg.n_embd * cfg.max_seq_len


@pytest.mark.parametrize("mode", MODES)
def test_the_base_preset_trains_a_few_steps_on_cpu_through_the_cli(mode: str, tmp_path, capsys) -> None:
    # Blocks shorter than the preset's 1024-token context keep the steps to seconds on 2 CPU cores.
    code = main(["train", "--preset", "base", "--mode", mode, "--block-size", "32", "--batch-size", "2",
                 "--max-steps", "2", "--warmup-steps", "0", "--eval-interval", "0", "--eval-batches", "1",
                 "--ckpt-interval", "0", "--out-dir", str(tmp_path), "--device", "cpu", "--no-progress",
                 "--log-level", "WARNING"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["steps"] == 2 and result["val_loss"] > 0
    config = load_checkpoint(tmp_path / "final").config
    assert config == NeuroQConfig.preset("base", mode=mode, vocab_size=config.vocab_size)
