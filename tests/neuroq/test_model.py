"""NeuroQ model: folded attention maths, masks and cache, determinism, gradients, sizes and config."""

from __future__ import annotations

import json

import pytest
import torch

from neuroq.errors import ConfigError
from neuroq.model import BrainNeuronLayer, NeuroQ, NeuroQConfig

MODES = ("layered", "brain", "gpt")
VOCAB = 61




def tiny(mode: str = "layered", **overrides) -> NeuroQ:
    torch.manual_seed(0)
    return NeuroQ(NeuroQConfig.preset("tiny", mode=mode, vocab_size=VOCAB, **overrides)).eval()


def strengthen_entanglement(model: NeuroQ) -> None:
    """At init J_h ~ N(0, 0.02) barely moves the scores; make the term large so a wrong fold would show."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.J.normal_(std=0.5)
            block.attn.lambda_attn.fill_(1.3)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    idx = torch.randint(6, VOCAB, (3, 12))
    mask = torch.ones_like(idx)
    mask[0, :5] = 0
    mask[2, :1] = 0
    return idx, mask


@pytest.mark.parametrize("padded", [False, True])
def test_folded_sdpa_attention_equals_explicit_entanglement_formula(padded: bool) -> None:
    fused = tiny("layered")
    strengthen_entanglement(fused)
    explicit = tiny("layered", attn_impl="explicit")
    explicit.load_state_dict(fused.state_dict())
    idx, mask = padded_batch()
    mask = mask if padded else None

    out_fused = fused(idx, attention_mask=mask).logits
    out_explicit = explicit(idx, attention_mask=mask).logits
    torch.testing.assert_close(out_fused, out_explicit, atol=1e-5, rtol=1e-5)

    without_term = tiny("layered")
    without_term.load_state_dict(fused.state_dict())
    for block in without_term.blocks:
        block.attn.lambda_attn.data.zero_()
    assert (without_term(idx, attention_mask=mask).logits - out_fused).abs().max() > 1e-2, "entanglement term inert"


def test_folded_attention_equals_explicit_formula_when_decoding_from_the_cache() -> None:
    fused = tiny("layered")
    strengthen_entanglement(fused)
    explicit = tiny("layered", attn_impl="explicit")
    explicit.load_state_dict(fused.state_dict())
    idx, mask = padded_batch()

    def continue_from_cache(model: NeuroQ) -> torch.Tensor:
        past = model(idx[:, :9], attention_mask=mask[:, :9], use_cache=True).past_key_values
        return model(idx[:, 9:], attention_mask=mask, past_key_values=past).logits

    torch.testing.assert_close(continue_from_cache(fused), continue_from_cache(explicit), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_left_padding_does_not_change_the_logits_of_real_tokens(mode: str) -> None:
    model = tiny(mode)
    idx, mask = padded_batch()
    batched = model(idx, attention_mask=mask).logits
    for row in range(idx.size(0)):
        start = int((mask[row] == 0).sum())
        alone = model(idx[row:row + 1, start:]).logits[0]
        torch.testing.assert_close(batched[row, start:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all(), "padding query rows must not produce NaN"


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_continuation_equals_the_full_forward(mode: str) -> None:
    model = tiny(mode)
    idx, mask = padded_batch()
    full = model(idx, attention_mask=mask).logits
    out = model(idx[:, :7], attention_mask=mask[:, :7], use_cache=True)
    logits = [out.logits]
    for t in range(7, idx.size(1)):
        out = model(idx[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=out.past_key_values,
                    use_cache=True)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_layered_cache_holds_the_concatenated_key_features() -> None:
    model = tiny("layered")
    past = model(torch.tensor([[7, 8, 9]]), use_cache=True).past_key_values
    head_dim = model.config.n_embd // model.config.n_head
    k, v = past[0]
    assert len(past) == model.config.n_layer
    assert k.shape == (1, model.config.n_head, 3, 2 * head_dim) and v.shape == (1, model.config.n_head, 3, head_dim)


@pytest.mark.parametrize("mode", MODES)
def test_eval_forward_is_deterministic(mode: str) -> None:
    model = tiny(mode, dropout=0.1)
    idx, mask = padded_batch()
    first = model(idx, attention_mask=mask).logits
    second = model(idx, attention_mask=mask).logits
    assert torch.equal(first, second)


def test_brain_noise_is_applied_in_training_only() -> None:
    model = tiny("brain", dropout=0.0).train()
    idx, _ = padded_batch()
    assert not torch.equal(model(idx).logits, model(idx).logits)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tie", [False, True])
def test_every_parameter_receives_a_finite_gradient(mode: str, tie: bool) -> None:
    model = tiny(mode, dropout=0.1, tie_embeddings=tie).train()
    idx, _ = padded_batch()
    model(idx[:, :-1], targets=idx[:, 1:]).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} is a dead parameter"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_brain_connection_mask_is_a_fixed_zero_diagonal_buffer_saved_with_the_weights() -> None:
    model = tiny("brain")
    layer = model.blocks[0].qbnn
    assert isinstance(layer, BrainNeuronLayer)
    assert "blocks.0.qbnn.mask" in model.state_dict()
    assert torch.all(layer.mask.diagonal() == 0)
    assert 0.15 < layer.mask.mean() < 0.35
    assert not any(p is layer.mask for p in model.parameters())

    torch.manual_seed(123)
    other = NeuroQ(model.config).eval()
    assert not torch.equal(other.blocks[0].qbnn.mask, layer.mask)
    other.load_state_dict(model.state_dict())
    idx, _ = padded_batch()
    assert torch.equal(other(idx).logits, model(idx).logits)


def test_autocast_bf16_forward_and_backward_are_dtype_clean() -> None:
    for mode in MODES:
        model = tiny(mode).train()
        idx, mask = padded_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(idx[:, :-1], targets=idx[:, 1:])
            cached = model(idx, attention_mask=mask, use_cache=True)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(cached.logits.float()).all()


def test_sequence_longer_than_max_seq_len_is_refused() -> None:
    model = tiny("gpt")
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    past = model(torch.zeros(1, 128, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 1, dtype=torch.long), past_key_values=past)


@pytest.mark.parametrize("mode", MODES)
def test_tiny_model_memorises_a_repeated_sequence(mode: str) -> None:
    model = tiny(mode).train()
    torch.manual_seed(0)
    seq = torch.randint(6, VOCAB, (1, 33)).repeat(4, 1)
    opt = model.configure_optimizer(weight_decay=0.0, lr=1e-2, betas=(0.9, 0.95), device_type="cpu")
    for _ in range(60):
        loss = model(seq[:, :-1], targets=seq[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_spec_presets_have_the_expected_sizes() -> None:
    torch.manual_seed(0)
    # The spec's sizes with its learned position table; today's default, rotary positions, has no table.
    layered = NeuroQ(NeuroQConfig.preset("layered", position="learned"))
    brain = NeuroQ(NeuroQConfig.preset("brain"))
    gpt = NeuroQ(NeuroQConfig.preset("gpt"))
    # The original counted 14.48M with 27% dead weights; ours carries none of them.
    assert layered.num_params(non_embedding=False) == 10_533_394
    assert NeuroQ(NeuroQConfig.preset("layered")).num_params(non_embedding=False) == 10_533_394 - 256 * 256
    assert 3.0e6 <= brain.num_params(non_embedding=False) <= 3.2e6
    assert gpt.num_params(non_embedding=False) < layered.num_params(non_embedding=False)
    # non-embedding leaves out the position table and the (untied) token table, as nanoGPT reports
    assert layered.num_params() == 10_533_394 - 256 * 256 - 8000 * 256


def test_flops_per_token_follows_the_nanogpt_formula_for_the_plain_gpt() -> None:
    model = NeuroQ(NeuroQConfig.preset("gpt", vocab_size=500))
    cfg = model.config
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n)
    assert model.flops_per_token() == 6 * matrices + 12 * cfg.n_layer * cfg.n_embd * cfg.max_seq_len
    assert model.estimate_mfu(tokens_per_second=1e6, peak_flops=1e15) == pytest.approx(model.flops_per_token() / 1e9)
    layered = NeuroQ(NeuroQConfig.preset("layered", vocab_size=500))
    assert layered.flops_per_token() > model.flops_per_token()


def test_optimizer_decays_matrices_and_embeddings_only() -> None:
    model = tiny("brain")
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_round_trips_through_json() -> None:
    config = NeuroQConfig.preset("brain", vocab_size=1234, tie_embeddings=True)
    assert NeuroQConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_embd": 60, "n_head": 8}, "n_embd"),
        ({"mode": "quantum"}, "mode"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": 8000.0}, "vocab_size"),
        ({"attn_impl": "flash"}, "attn_impl"),
    ],
)
def test_invalid_config_raises_config_error_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        NeuroQConfig(**overrides)


def test_unknown_config_keys_and_presets_are_refused() -> None:
    with pytest.raises(ConfigError, match="n_kv_head"):
        NeuroQConfig.from_dict({**NeuroQConfig().to_dict(), "n_kv_head": 2})
    with pytest.raises(ConfigError, match="preset"):
        NeuroQConfig.preset("huge")
