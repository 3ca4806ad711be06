"""The fast NeuroQ (folded SDPA attention, padded values, stacked brain refinement) equals the spec's formulas.

`spec_forward` below is NEUROQ_SPEC.md written out term by term with the model's weights, one token row and one
head at a time where the spec says so, sharing no code with `neuroq.model`: the model must match it in fp32
(tight) and under bf16 autocast (loose: bf16 keeps 8 bits of mantissa), in every mode, over a full forward and
when decoding through the growing and the static KV cache; and so must it with the model options that change the
formulas (rotary positions on the q.k term only, RMSNorm, the logit soft-cap, tied embeddings).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neuroq.model import NeuroQ, NeuroQConfig, StaticKVCache

MODES = ("layered", "brain", "gpt")
VOCAB = 61
# Every option that changes a formula; the soft-cap is low enough to bend these small logits.
OPTIONS = dict(position="rope", norm="rmsnorm", logit_softcap=1.0, tie_embeddings=True)


def model_with_strong_qbnn_terms(mode: str, **options) -> NeuroQ:
    """At init (N(0, 0.02)) the QBNN terms barely move the logits; scaled up, a wrong term shows. Larger q and k
    would make the softmax so sharp that bf16 rounding alone moves the logits by 10% (the explicit formula too)."""
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig.preset("tiny", mode=mode, vocab_size=VOCAB, **options)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".J", ".W")):
                param.normal_(std=0.3)
            if "qkv" in name:
                param.normal_(std=0.15)
            if name.endswith("lambda_attn"):
                param.fill_(1.3)
    return model


def spec_brain_layer(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f(x) of the spec's brain mode, eval (no noise): s^0 = W_in x + b, T steps, W_out s^T + b."""
    W, J = layer.W * layer.mask, layer.J * layer.mask
    s = x @ layer.inp.weight.T + layer.inp.bias
    for _ in range(layer.steps):
        u = torch.tanh(s)
        sigma = s @ W
        delta = u * (u @ J)
        s = torch.tanh(sigma + layer.gain * delta)
    return s @ layer.out.weight.T + layer.out.bias


def spec_norm(norm: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """(x - mean) / std * g + b, or with norm="rmsnorm" x / rms(x) * g (eps 1e-5 either way)."""
    if kind == "rmsnorm":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    return F.layer_norm(x, (x.size(-1),), norm.weight, norm.bias, eps=1e-5)


def spec_qbnn_layer(layer: torch.nn.Module, h: torch.Tensor, norm: str) -> torch.Tensor:
    """GELU(LayerNorm(h~ + lambda_eff * delta)), delta_j = tanh(h~_j) * sum_i J_ij tanh(h_i)."""
    h_lin = h @ layer.linear.weight.T + layer.linear.bias
    delta = torch.tanh(h_lin) * (torch.tanh(h) @ layer.J)
    lam = layer.lambda_min + (layer.lambda_max - layer.lambda_min) * torch.sigmoid(layer.lambda_base)
    return F.gelu(spec_norm(layer.norm, h_lin + lam * delta, norm))


def spec_rotary(x: torch.Tensor) -> torch.Tensor:
    """RoPE of one head's rows (T, d): features i and i + d/2 as one complex number, times e^(i t 10000^(-2i/d))."""
    T, d = x.shape[-2:]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones(T, d // 2, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * theta)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double()) * turn
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def spec_attention(attn: torch.nn.Module, x: torch.Tensor, mode: str, rope: bool) -> torch.Tensor:
    """S_ij = q_i.k_j / sqrt(d) (+ lambda tanh(q_i)^T J_h tanh(k_j)), causal softmax, times V, projection; with
    rope the dot product is rot_i(q_i).rot_j(k_j) and the QBNN term keeps the unrotated q and k."""
    T, C = x.shape[1], x.shape[2]
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=-1)
    if mode == "brain":
        q = q + 0.1 * spec_brain_layer(attn.refine, q)
        k = k + 0.1 * spec_brain_layer(attn.refine, k)
    d = C // attn.n_head
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(attn.n_head):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        q_dot, k_dot = (spec_rotary(qh), spec_rotary(kh)) if rope else (qh, kh)
        scores = q_dot @ k_dot.transpose(-1, -2) / math.sqrt(d)
        if mode == "layered":
            scores = scores + attn.lambda_attn * torch.tanh(qh) @ attn.J[h] @ torch.tanh(kh).transpose(-1, -2)
        heads.append(scores.masked_fill(~causal, float("-inf")).softmax(-1) @ vh)
    return torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias


@torch.no_grad()
def spec_forward(model: NeuroQ, idx: torch.Tensor) -> torch.Tensor:
    """Logits of the spec's model (fp32): blocks x + Attn(LN1 x); x + 0.7 FFN(u) + 0.3 Q(u) (gpt: + FFN(u)), and
    the soft-cap c tanh(logits / c) when the model has one."""
    cfg = model.config
    mode, rope, norm = cfg.mode, cfg.position == "rope", cfg.norm
    x = model.tok_emb.weight[idx]
    if not rope:
        x = x + model.pos_emb.weight[: idx.size(1)]
    for block in model.blocks:
        x = x + spec_attention(block.attn, spec_norm(block.ln1, x, norm), mode, rope)
        u = spec_norm(block.ln2, x, norm)
        ffn = F.gelu(u @ block.ffn.fc.weight.T + block.ffn.fc.bias) @ block.ffn.proj.weight.T + block.ffn.proj.bias
        if mode == "gpt":
            x = x + ffn
        elif mode == "layered":
            hidden = spec_qbnn_layer(block.qbnn.layer1, u, norm)
            x = x + 0.7 * ffn + 0.3 * spec_qbnn_layer(block.qbnn.layer2, hidden, norm)
        else:
            x = x + 0.7 * ffn + 0.3 * spec_brain_layer(block.qbnn, u)
    logits = spec_norm(model.ln_f, x, norm) @ model.lm_head.weight.T
    cap = cfg.logit_softcap
    return cap * torch.tanh(logits / cap) if cap else logits


def tokens() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(6, VOCAB, (2, 12))


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, bf16: bool) -> None:
    if bf16:
        # Loose: relative to the logits' scale, what 8-bit mantissas leave of a 2-layer model.
        error = (actual.float() - expected).abs().max() / expected.abs().max()
        assert error < 0.05, f"bf16 result off the formula by {error:.3f} of the logits' scale"
    else:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def logits_through(model: NeuroQ, idx: torch.Tensor, path: str) -> torch.Tensor:
    """All positions' logits: one forward, or a 5-token prefill then one token at a time through a KV cache."""
    if path == "forward":
        return model(idx).logits
    prefill = model(idx[:, :5], use_cache=True)
    logits, past = [prefill.logits], prefill.past_key_values
    static = StaticKVCache(past, model.config.max_seq_len) if path == "static cache" else None
    for t in range(5, idx.size(1)):
        if static is None:
            out = model(idx[:, t:t + 1], past_key_values=past, use_cache=True)
            logits.append(out.logits)
            past = out.past_key_values
        else:
            mask = torch.ones(idx.size(0), 1, 1, t + 1, dtype=torch.bool)
            position = torch.full((idx.size(0), 1), t)
            logits.append(model.decode_step(idx[:, t:t + 1], position, mask, static, torch.tensor([t]))[:, None])
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["forward", "growing cache", "static cache"])
@pytest.mark.parametrize("mode", MODES)
def test_the_logits_equal_the_spec_formulas(mode: str, path: str, bf16: bool) -> None:
    model = model_with_strong_qbnn_terms(mode)
    idx = tokens()
    expected = spec_forward(model, idx)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        actual = logits_through(model, idx, path)
    assert_matches(actual, expected, bf16)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["forward", "growing cache", "static cache"])
@pytest.mark.parametrize("mode", MODES)
def test_the_logits_equal_the_spec_formulas_with_the_model_options_on(mode: str, path: str, bf16: bool) -> None:
    model = model_with_strong_qbnn_terms(mode, **OPTIONS)
    assert model.pos_emb is None
    idx = tokens()
    expected = spec_forward(model, idx)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        actual = logits_through(model, idx, path)
    assert_matches(actual, expected, bf16)


@pytest.mark.parametrize("mode", ["layered", "brain"])
def test_the_qbnn_terms_matter_at_these_weights(mode: str) -> None:
    """Otherwise the checks above would pass with a QBNN term left out."""
    model = model_with_strong_qbnn_terms(mode)
    idx = tokens()
    with torch.no_grad():
        with_terms = model(idx).logits
        for block in model.blocks:
            for module in (block.qbnn, block.attn.refine):
                if module is not None:
                    for param in module.parameters():
                        param.zero_()
            if mode == "layered":
                block.attn.lambda_attn.zero_()
        assert (model(idx).logits - with_terms).abs().max() > 1e-2
