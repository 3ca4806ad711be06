"""The model options (tied embeddings, rotary positions, zero-initialised residual writes, z-loss, logit soft-cap,
RMSNorm): off by default, and each one, in every mode, trains, checkpoints, reloads to the same model and decodes
the same tokens with and without the KV cache; rotary positions keep the positions the model computes (left
padding, the caches) and the explicit attention formula. tests/neuroq/test_model_formula.py checks them against
the spec's formulas."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuroq.__main__ import main as neuroq_main
from neuroq.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from neuroq.errors import ConfigError
from neuroq.evaluate import evaluate_blocks
from neuroq.generate import GenerationConfig, generate_ids
from neuroq.model import NeuroQ, NeuroQConfig, rope_tables
from neuroq.recipe import Recipe
from neuroq.train import TrainConfig, train, z_loss
from tests.neuroq.test_model import VOCAB, padded_batch
from tests.support.training import BLOCK, blocks, corpus, tiny_config  # noqa: F401 (corpus is a fixture)

MODES = ("layered", "brain", "gpt")
# option -> (NeuroQConfig fields, TrainConfig fields), each the choice that is not the default (rotary positions
# are: the learned table is the option). The z-loss weight is far above a sweep's 1e-4 so that four
# steps show it; the cap is low enough to bind on a tiny model's logits.
OPTIONS = {
    "tied": ({"tie_embeddings": True}, {}),
    "learned-positions": ({"position": "learned"}, {}),
    "zero-init": ({"zero_init_residual": True}, {}),
    "z-loss": ({}, {"z_loss": 0.05}),
    "softcap": ({"logit_softcap": 2.0}, {}),
    "rmsnorm": ({"norm": "rmsnorm"}, {}),
}
ALL_ON = dict(position="rope", norm="rmsnorm", tie_embeddings=True, zero_init_residual=True, logit_softcap=30.0)
PROMPTS = [[2, 50, 60, 70, 80], [2, 90], [2, 100, 101, 102, 103, 104, 105, 106]]
GREEDY = GenerationConfig(max_new_tokens=10, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                          stop_at_user=False)


def tiny(mode: str = "layered", **overrides) -> NeuroQ:
    torch.manual_seed(0)
    return NeuroQ(NeuroQConfig.preset("tiny", mode=mode, **{"vocab_size": VOCAB, **overrides})).eval()


def decoded(model: NeuroQ, **changes) -> list[list[int]]:
    results = generate_ids(model, PROMPTS, replace(GREEDY, **changes), eos_ids=())
    return [sample.token_ids for samples in results for sample in samples]


# ------------------------------------------------------------------------------------------------ every option


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("option", OPTIONS)
def test_the_option_trains_reloads_to_the_same_model_and_decodes_alike_with_and_without_the_cache(
        corpus, tmp_path: Path, option: str, mode: str) -> None:
    model_fields, train_fields = OPTIONS[option]
    cfg = tiny_config(corpus, tmp_path / "run", model={"mode": mode, "dropout": 0.0, **model_fields}, max_steps=4,
                      warmup_steps=0, lr=1e-2, eval_interval=0, ckpt_interval=0, **train_fields)
    result = train(cfg, blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"])

    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses

    loaded = load_checkpoint(result.checkpoint_path)
    assert loaded.config == cfg.model
    # The validation loss train() measured on its model in memory, measured again on the reloaded weights.
    val = torch.utils.data.Subset(blocks(corpus, "val"), range(cfg.eval_batches * cfg.batch_size))
    assert evaluate_blocks(loaded.model, val, cfg.batch_size, torch.device("cpu"))["loss"] == pytest.approx(
        result.final_val_loss, rel=1e-6)
    again = load_checkpoint(save_checkpoint(tmp_path / "again", loaded.model, loaded.tokenizer))
    idx, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(again.model(idx, attention_mask=mask).logits, loaded.model(idx, attention_mask=mask).logits)

    reference = decoded(loaded.model, use_cache=False)
    assert decoded(loaded.model, decoder="dynamic") == reference
    assert decoded(loaded.model, decoder="static") == reference


def test_the_defaults_are_the_measured_ones_and_a_checkpoint_saved_before_the_options_existed_loads_as_it_was(
        tmp_path: Path, corpus) -> None:
    config = NeuroQConfig()
    assert (config.tie_embeddings, config.position, config.zero_init_residual, config.logit_softcap, config.norm) == (
        False, "rope", False, 0.0, "layernorm")
    assert TrainConfig().z_loss == 0.0
    model = tiny("layered", vocab_size=corpus["tokenizer"].vocab_size, position="learned")
    path = save_checkpoint(tmp_path / "old", model, corpus["tokenizer"])
    meta = json.loads((path / "config.json").read_text())
    for name in ("position", "zero_init_residual", "logit_softcap", "norm"):
        del meta["model"][name]
    (path / "config.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(path)
    idx, _ = padded_batch()
    assert isinstance(loaded.model.ln_f, torch.nn.LayerNorm) and loaded.model.pos_emb is not None
    assert torch.equal(loaded.model(idx).logits, model(idx).logits)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"position": "alibi"}, "position"),
        ({"position": "rope", "n_embd": 60, "n_head": 4}, "position"),  # head dim 15: rope rotates pairs
        ({"norm": "batchnorm"}, "norm"),
        ({"logit_softcap": -1.0}, "logit_softcap"),
        ({"logit_softcap": math.inf}, "logit_softcap"),
        ({"tie_embeddings": "yes"}, "tie_embeddings"),
        ({"zero_init_residual": 1}, "zero_init_residual"),
    ],
)
def test_a_bad_option_raises_config_error_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        NeuroQConfig(**overrides)


def test_a_negative_z_loss_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^TrainConfig\.z_loss must be"):
        TrainConfig(z_loss=-1e-4)


# ------------------------------------------------------------------------------------------------ rotary positions


def test_rope_replaces_the_position_table_and_keeps_the_size_counts() -> None:
    learned, rope = tiny("layered", position="learned"), tiny("layered")
    assert rope.pos_emb is None and not any("pos_emb" in name for name in rope.state_dict())
    table = learned.config.max_seq_len * learned.config.n_embd
    assert rope.num_params(non_embedding=False) == learned.num_params(non_embedding=False) - table
    assert rope.num_params() == learned.num_params()
    assert rope.flops_per_token() == learned.flops_per_token()


@pytest.mark.parametrize("mode", MODES)
def test_with_rope_the_explicit_formula_equals_the_fused_attention_padded_and_from_the_cache(mode: str) -> None:
    fused = tiny(mode, position="rope")
    with torch.no_grad():
        for name, param in fused.named_parameters():
            if name.endswith(("attn.J", "qkv.weight")):
                param.normal_(std=0.3)  # sharp scores and a large QBNN term, so that a wrong term would show
    explicit = tiny(mode, position="rope", attn_impl="explicit")
    explicit.load_state_dict(fused.state_dict())
    idx, mask = padded_batch()

    def forward_and_continuation(model: NeuroQ) -> tuple[torch.Tensor, torch.Tensor]:
        past = model(idx[:, :9], attention_mask=mask[:, :9], use_cache=True).past_key_values
        return (model(idx, attention_mask=mask).logits,
                model(idx[:, 9:], attention_mask=mask, past_key_values=past).logits)

    with torch.no_grad():
        for actual, expected in zip(forward_and_continuation(fused), forward_and_continuation(explicit)):
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_with_rope_a_left_padded_row_computes_what_its_unpadded_prompt_computes(mode: str) -> None:
    model = tiny(mode, position="rope")
    idx, mask = padded_batch()
    with torch.no_grad():
        batched = model(idx, attention_mask=mask).logits
        for row in range(idx.size(0)):
            start = int((mask[row] == 0).sum())
            alone = model(idx[row:row + 1, start:]).logits[0]
            torch.testing.assert_close(batched[row, start:], alone, atol=1e-5, rtol=1e-5)


def test_with_rope_the_layered_cache_holds_rotated_keys_beside_tanh_of_the_unrotated_ones() -> None:
    model = tiny("layered", position="rope")
    d = model.config.n_embd // model.config.n_head
    x = torch.randn(1, 3, model.config.n_embd)
    keys, _ = model.blocks[0].attn(x, None)[1]
    rotated, _ = model.blocks[0].attn(x, None, rope=rope_tables(torch.arange(3)[None], d))[1]
    assert torch.equal(rotated[..., d:], keys[..., d:])  # tanh(k): the same at every position
    torch.testing.assert_close(rotated[..., 0, :d], keys[..., 0, :d])  # position 0 is not turned
    assert not torch.allclose(rotated[..., 1:, :d], keys[..., 1:, :d])


# ------------------------------------------------------------------------------------------------ the others


@pytest.mark.parametrize("mode", MODES)
def test_zero_initialised_residual_writes_make_every_block_the_identity_at_init(mode: str) -> None:
    model = tiny(mode, zero_init_residual=True)
    x = torch.randn(2, 7, model.config.n_embd)
    for block in model.blocks:
        assert torch.equal(block(x, None)[0], x)
    assert not torch.equal(tiny(mode).blocks[0](x, None)[0], x)


def test_the_z_loss_is_the_mean_squared_log_normaliser_over_the_target_tokens() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    targets = torch.tensor([[1, -100]])
    assert z_loss(logits, targets).item() == pytest.approx(math.log(4.0) ** 2)


def test_the_z_loss_changes_the_gradient_but_not_the_reported_loss(corpus, tmp_path: Path) -> None:
    def run(weight: float) -> list[dict]:
        cfg = tiny_config(corpus, tmp_path / str(weight), max_steps=2, eval_interval=0, ckpt_interval=0,
                          warmup_steps=0, z_loss=weight)
        return train(cfg, blocks(corpus, "train"), blocks(corpus, "val"), corpus["tokenizer"]).history

    plain, with_z = run(0.0), run(1.0)
    # Step 1's loss is measured before any update: the same cross-entropy, not cross-entropy + z-loss.
    assert with_z[0]["train_loss"] == plain[0]["train_loss"]
    assert with_z[1]["train_loss"] != plain[1]["train_loss"]


def test_the_soft_cap_bounds_the_logits_of_every_path() -> None:
    model = tiny("layered", logit_softcap=0.3)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # raw logits of tens
        idx, mask = padded_batch()
        logits = model(idx, attention_mask=mask).logits
        loss_logits = model(idx[:, :-1], targets=idx[:, 1:]).logits
        uncapped = replace(model.config, logit_softcap=0.0)
    assert logits.abs().max() <= 0.3 and loss_logits.abs().max() <= 0.3
    raw = NeuroQ(uncapped).eval()
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(logits, 0.3 * torch.tanh(raw(idx, attention_mask=mask).logits / 0.3))


def test_tied_embeddings_store_the_table_once_and_reload_tied(corpus, tmp_path: Path) -> None:
    model = tiny("gpt", vocab_size=corpus["tokenizer"].vocab_size, tie_embeddings=True)
    untied = tiny("gpt", vocab_size=corpus["tokenizer"].vocab_size)
    table = model.tok_emb.weight.numel()
    assert model.num_params(non_embedding=False) == untied.num_params(non_embedding=False) - table
    assert model.num_params() == untied.num_params() and model.flops_per_token() == untied.flops_per_token()
    path = save_checkpoint(tmp_path / "tied", model, corpus["tokenizer"])
    assert len([name for name in load_file(path / "model.safetensors") if name in ("tok_emb.weight",
                                                                                     "lm_head.weight")]) == 1
    loaded = load_checkpoint(path).model
    assert loaded.lm_head.weight is loaded.tok_emb.weight


# ------------------------------------------------------------------------------------------------ plumbing


def test_the_train_command_and_a_recipe_set_the_options(corpus, tmp_path: Path) -> None:
    recipe = Recipe("options", train={"z_loss": 1e-4}, model={"position": "rope", "norm": "rmsnorm"}).save(
        tmp_path / "options.yaml")
    out = tmp_path / "run"
    code = neuroq_main(["train", "--recipe", str(recipe), "--tie-embeddings", "--zero-init-residual",
                        "--logit-softcap", "30", "--norm", "layernorm", "--preset", "tiny", "--max-seq-len", "32",
                        "--max-steps", "2", "--batch-size", "2", "--tokenizer", str(corpus["root"] / "tokenizer.model"),
                        "--out-dir", str(out), "--device", "cpu", "--eval-interval", "0", "--log-level", "WARNING"])
    assert code == 0
    saved = read_checkpoint_config(out / "final")
    model = saved["model"]
    # The recipe's options, the flags' options, and a flag overriding the recipe (norm).
    assert (model["position"], model["norm"], model["tie_embeddings"], model["zero_init_residual"],
            model["logit_softcap"]) == ("rope", "layernorm", True, True, 30.0)
    assert saved["extra"]["train_config"]["z_loss"] == 1e-4
