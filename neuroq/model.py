"""NeuroQ: a GPT-style decoder with QBNN ("entanglement") terms, in three modes sharing one code path.

- ``layered``: attention scores gain a per-head bilinear term ``lambda * tanh(q)^T J_h tanh(k)`` and each block
  adds a QBNN branch (two :class:`QBNNLayer`) beside the FFN.
- ``brain``: q and k are refined by a shared sparse recurrent :class:`BrainNeuronLayer`, and another one is the
  QBNN branch.
- ``gpt``: the same skeleton with no QBNN term, as the baseline the QBNN terms are measured against.

Against the original implementation: inference is deterministic (the original mixed a sinusoid of a call counter
into the QBNN gain and added brain-mode noise at inference), its dead parameters (an unused theta projection, phase
and bias) are gone, and generation uses a KV cache instead of re-running the whole context for every token: a
growing one (:data:`KVCache`), or a :class:`StaticKVCache` allocated once, whose decode step has the same shapes
at every step so that it can be captured (CUDA graphs).

Model options: tied input/output embeddings, rotary positions instead of the learned table (see
:class:`CausalSelfAttention` for how they meet the QBNN term), zero-initialised residual writes, a logit soft-cap,
RMSNorm for every norm. Rotary positions are on by default, the others off, as measured (issue 18,
bench/RESULTS.md); a checkpoint saved before a field existed loads as the model it was
(:meth:`NeuroQConfig.from_saved`).

One file on purpose, like nanoGPT's ``model.py``: it reads top-down (building blocks, then the config, then the
model), and each QBNN piece is a small module beside the attention and MLP it modifies, so the whole computation a
checkpoint holds can be checked in one reading. Split up, a reader would chase the three modes across files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from neuroq.errors import ConfigError
from neuroq.validation import is_int, is_number, require

__all__ = ["NeuroQConfig", "NeuroQ", "NeuroQOutput", "KVCache", "StaticKVCache"]

KVCache = list[tuple[Tensor, Tensor]]
"""Per layer ``(k, v)`` of shape ``(B, n_head, T_past, d_k)`` / ``(B, n_head, T_past, d)``; layered mode stores
the concatenated key features ``[k, tanh(k)]`` (``d_k = 2d``; ``[rot(k), tanh(k)]`` with rotary positions), so a
cached key is never recomputed."""


class StaticKVCache:
    """Keys and values of every layer for ``batch`` rows and ``length`` positions, allocated once, written in place.

    Laid out as :data:`KVCache` with ``T_past = length``. A decode step (:meth:`NeuroQ.decode_step`) writes its
    key and value at one column and attends over the first K columns, K being its mask's width: the current
    length when it runs eagerly (no wasted work), or all ``length`` columns, the unwritten ones masked, when it is
    captured, since a CUDA graph replays fixed shapes and addresses. The prompt's keys come from a normal forward
    (:meth:`fill`), so prefill is the same computation with either cache.
    """

    def __init__(self, past: KVCache, length: int):
        """Room for ``length`` positions, with the layout, dtype and device of the prefill cache ``past``."""
        self.length = length
        self.keys = [k.new_zeros(k.shape[:2] + (length, k.size(3))) for k, _ in past]
        self.values = [v.new_zeros(v.shape[:2] + (length, v.size(3))) for _, v in past]
        self.fill(past)

    def fill(self, past: KVCache) -> None:
        """Write a prefill cache into columns ``[0, T_past)`` (later columns keep stale values, always masked)."""
        width = past[0][0].size(2)
        for keys, values, (k, v) in zip(self.keys, self.values, past):
            keys[:, :, :width].copy_(k)
            values[:, :, :width].copy_(v)


class _StaticLayer(NamedTuple):
    """One layer's view of a StaticKVCache during a decode step: the buffers and the column to write."""

    keys: Tensor
    values: Tensor
    write_at: Tensor

# Brain-mode neuron layers: (density rho, gain lambda) from the spec; the QBNN branch has twice the neurons.
BRAIN_ATTN_DENSITY, BRAIN_ATTN_GAIN = 0.2, 0.3
BRAIN_FFN_DENSITY, BRAIN_FFN_GAIN = 0.25, 0.35
BRAIN_REFINE_SCALE = 0.1
# Block residual mix of the FFN and QBNN branches (spec); gpt mode uses the FFN alone at weight 1.
FFN_WEIGHT, QBNN_WEIGHT = 0.7, 0.3
# Rotary positions: the wavelengths' base (RoFormer, Llama); LayerNorm's eps for RMSNorm too, so that switching
# the norm changes the normalisation and nothing else.
ROPE_BASE = 10000.0
NORM_EPS = 1e-5

Rope = tuple[Tensor, Tensor]
"""``(cos, sin)`` of every token's rotation angles, ``(B|1, 1, T, d/2)``: computed once per forward, used by every
layer."""


def rope_tables(positions: Tensor, head_dim: int) -> Rope:
    """fp32 cos and sin of ``position * ROPE_BASE^(-2i/d)`` for positions ``(B|1, T)``. Computed from the positions
    at every call, not kept as a buffer: a model cast to bf16 would cast the buffer too, and bf16 angles are off by
    whole radians at positions in the hundreds."""
    inv_freq = ROPE_BASE ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[:, None, :, None].float() * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: Tensor, rope: Rope) -> Tensor:
    """Rotary embedding of ``x`` ``(B, H, T, d)``: each pair ``(x_i, x_{i + d/2})`` turned by its angle (the
    GPT-NeoX / Llama half-split layout), in ``x``'s dtype. Written out here because torch has no rotary op."""
    cos, sin = (t.to(x.dtype) for t in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def make_norm(config: NeuroQConfig, dim: int) -> nn.Module:
    """The model's norm over ``dim`` features: LayerNorm, or RMSNorm (``config.norm``)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=NORM_EPS)
    return nn.LayerNorm(dim, eps=NORM_EPS)


class BrainNeuronLayer(nn.Module):
    """Sparse recurrent neuron layer ``f`` of brain mode: ``in_dim -> n_neurons (T steps) -> out_dim``.

    The connection mask is drawn once at construction (zero diagonal) and kept as a persistent buffer, so a
    checkpoint reproduces the same sparsity. The theta-scaled noise is a training-time regulariser only:
    in eval the layer is a deterministic function.
    """

    def __init__(self, in_dim: int, n_neurons: int, out_dim: int, *, density: float, gain: float, steps: int):
        super().__init__()
        self.gain = gain
        self.steps = steps
        self.inp = nn.Linear(in_dim, n_neurons)
        self.W = nn.Parameter(torch.empty(n_neurons, n_neurons))
        self.J = nn.Parameter(torch.empty(n_neurons, n_neurons))
        self.theta = nn.Parameter(torch.empty(n_neurons))
        self.out = nn.Linear(n_neurons, out_dim)
        mask = torch.bernoulli(torch.full((n_neurons, n_neurons), density))
        mask.fill_diagonal_(0.0)
        self.register_buffer("mask", mask)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.W, std=0.02)
        nn.init.normal_(self.J, std=0.02)
        nn.init.uniform_(self.theta, 0.25, 1.25)

    def recurrent_weight_uses(self) -> int:
        """Weight elements multiplied per call beyond one use of each parameter (the T-step recurrence)."""
        return 2 * (self.steps - 1) * self.W.numel()

    def forward(self, x: Tensor) -> Tensor:
        # The gain scales the N x N matrix, not each step's (tokens x N) product: the same maths in one fused
        # addcmul instead of two passes over the activations.
        W, J = self.W * self.mask, self.J * self.mask * self.gain
        s = self.inp(x)
        for _ in range(self.steps):
            u = torch.tanh(s)
            pre = torch.addcmul(s @ W, u, u @ J)
            if self.training:
                # In pre's dtype: the fp32 theta would otherwise promote a bf16 step (and what follows) to fp32.
                temperature = (0.1 * torch.sin(2 * self.theta).abs()).to(pre.dtype)
                pre = pre.addcmul(temperature, torch.randn_like(pre))
            s = torch.tanh(pre)
        return self.out(s)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with the mode's QBNN term and a KV cache.

    Layered scores ``S = q.k/sqrt(d) + lambda * tanh(q)^T J_h tanh(k)`` are a single dot product of the
    concatenated features ``[q/sqrt(d), lambda * tanh(q) J_h] . [k, tanh(k)]``, so the fused SDPA kernel computes
    them exactly without materialising S; ``attn_impl="explicit"`` builds S from the formula as the reference.

    With rotary positions (``position="rope"``) only the dot-product term is rotated:
    ``S = rot_i(q).rot_j(k)/sqrt(d) + lambda * tanh(q)^T J_h tanh(k)``, folded as
    ``[rot(q)/sqrt(d), lambda * tanh(q) J_h] . [rot(k), tanh(k)]`` (the cache stores ``[rot(k), tanh(k)]``), and
    the explicit formula computes the same. Rotation makes q.k depend on the offset i - j alone; through tanh it
    would not (tanh does not commute with a rotation), so rotating the QBNN term's inputs would tie it to absolute
    positions. Left unrotated it stays what the spec writes, a content term. In brain mode q and k are refined
    first and then rotated, so the refiner sees the same inputs with either position scheme.
    """

    def __init__(self, config: NeuroQConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.explicit = config.attn_impl == "explicit"
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.entangled = config.mode == "layered"
        if self.entangled:
            self.J = nn.Parameter(torch.empty(config.n_head, self.head_dim, self.head_dim))
            # 0-dim so that under autocast lambda * bf16 stays bf16 (a 1-element vector would promote to fp32).
            self.lambda_attn = nn.Parameter(torch.tensor(float(config.lambda_entangle)))
        self.refine = (
            BrainNeuronLayer(config.n_embd, config.brain_neurons, config.n_embd, density=BRAIN_ATTN_DENSITY,
                             gain=BRAIN_ATTN_GAIN, steps=config.brain_steps)
            if config.mode == "brain" else None
        )

    def reset_parameters(self) -> None:
        if self.entangled:
            nn.init.normal_(self.J, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | _StaticLayer | None = None,
                rope: Rope | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``mask``: boolean ``(B|1, 1, T, K)``, True = may attend; None means plain causal, no past. ``K`` is
        ``T_past + T`` with a growing cache, the columns to attend over with a static one. ``rope``: the new
        tokens' rotation tables, None with learned positions."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        if self.refine is not None:
            # f_a acts on each token alone: one call on q and k stacked is the two calls' maths in half the
            # launches, with GEMMs twice as tall.
            refined = self.refine(torch.cat([q, k]))
            q, k = q.add(refined[:B], alpha=BRAIN_REFINE_SCALE), k.add(refined[B:], alpha=BRAIN_REFINE_SCALE)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q_dot, k_dot = (q, k) if rope is None else (rotate(q, rope), rotate(k, rope))
        k_feat = torch.cat([k_dot, torch.tanh(k)], dim=-1) if self.entangled else k_dot
        if isinstance(past, _StaticLayer):
            past.keys.index_copy_(2, past.write_at, k_feat)
            past.values.index_copy_(2, past.write_at, v)
            k_feat, v = past.keys[:, :, :mask.size(-1)], past.values[:, :, :mask.size(-1)]
        elif past is not None:
            k_feat = torch.cat([past[0], k_feat], dim=2)
            v = torch.cat([past[1], v], dim=2)
        attend = self._explicit if self.explicit else self._fused
        y = attend(q_dot, q, k_feat, v, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), (k_feat, v)

    def _fused(self, q_dot: Tensor, q: Tensor, k_feat: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``q_dot``: the queries of the dot-product term (rotated with rope), ``q`` those of the QBNN term."""
        scale = None
        width = v.size(-1)
        if self.entangled:
            # SDPA's scale 1/sqrt(d) applies to both halves, so the QBNN half carries lambda * sqrt(d): folded into
            # the (n_head, d, d) matrix J rather than applied to q and to the (tokens x d) product.
            q_dot = torch.cat([q_dot, torch.tanh(q) @ (self.lambda_attn * self.head_dim**0.5 * self.J)], dim=-1)
            scale = self.head_dim**-0.5
            if mask is None:
                # The flash kernels (CUDA and CPU) need values as wide as keys; with d-wide values SDPA falls back
                # to a slower kernel (CPU: the math one, which materialises S). Zero columns in v add zero columns
                # to the output, dropped below. Only on the plain causal path (training, unpadded prefill): with a
                # mask the values are the KV cache, which padding would copy at every decode step.
                v = F.pad(v, (0, k_feat.size(-1) - width))
        y = F.scaled_dot_product_attention(
            q_dot, k_feat, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None, scale=scale,
        )
        return y[..., :width]

    def _explicit(self, q_dot: Tensor, q: Tensor, k_feat: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        # The keys' two halves as the cache holds them: k (rotated with rope) and tanh of the unrotated k.
        k_dot, k_tanh = k_feat[..., : self.head_dim], k_feat[..., self.head_dim:]
        scores = (q_dot @ k_dot.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if self.entangled:
            scores = scores + self.lambda_attn * (torch.tanh(q) @ self.J) @ k_tanh.transpose(-2, -1)
        if mask is None:
            T = q_dot.size(-2)
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        return self.attn_dropout(scores.softmax(dim=-1)) @ v


class FFN(nn.Module):
    """Position-wise MLP: Linear, GELU, dropout, Linear, dropout."""

    def __init__(self, config: NeuroQConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.n_ff)
        self.proj = nn.Linear(config.n_ff, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.dropout(F.gelu(self.fc(x)))))


class QBNNLayer(nn.Module):
    """One layered-mode QBNN layer: ``GELU(LN(h~ + lambda_eff * tanh(h~) * (tanh(h) J)))`` with ``h~ = W h + b``.

    ``lambda_eff`` is a learnable gain bounded to ``[0.5, 1.5] * lambda``; it depends on nothing else, so the
    layer is deterministic (the original mixed in a call counter). LN is the model's norm (RMSNorm with
    ``norm="rmsnorm"``).
    """

    def __init__(self, in_dim: int, out_dim: int, lam: float, norm: nn.Module):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.J = nn.Parameter(torch.empty(in_dim, out_dim))
        self.lambda_base = nn.Parameter(torch.tensor(0.5))
        self.lambda_min, self.lambda_max = 0.5 * lam, 1.5 * lam
        self.norm = norm

    def reset_parameters(self) -> None:
        nn.init.normal_(self.J, std=0.02)

    def forward(self, h: Tensor) -> Tensor:
        h_lin = self.linear(h)
        lam = self.lambda_min + (self.lambda_max - self.lambda_min) * torch.sigmoid(self.lambda_base)
        # lambda scales J (in x out), not the (tokens x out) product: one fused addcmul, and lambda's gradient
        # sums over J's elements instead of over every token's.
        return F.gelu(self.norm(torch.addcmul(h_lin, torch.tanh(h_lin), torch.tanh(h) @ (lam * self.J))))


class QBNNBranch(nn.Module):
    """Layered-mode QBNN branch ``Q(u) = QBNNLayer_2(dropout(QBNNLayer_1(u)))``, sizes E -> F -> E."""

    def __init__(self, config: NeuroQConfig):
        super().__init__()
        self.layer1 = QBNNLayer(config.n_embd, config.n_ff, config.lambda_entangle, make_norm(config, config.n_ff))
        self.dropout = nn.Dropout(config.dropout)
        self.layer2 = QBNNLayer(config.n_ff, config.n_embd, config.lambda_entangle, make_norm(config, config.n_embd))

    def forward(self, u: Tensor) -> Tensor:
        return self.layer2(self.dropout(self.layer1(u)))


class Block(nn.Module):
    """Pre-LN block: ``x + Attn(LN1 x)``, then ``x + 0.7 FFN(u) + 0.3 Q(u)`` with ``u = LN2 x`` (gpt: FFN only)."""

    def __init__(self, config: NeuroQConfig):
        super().__init__()
        self.ln1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = make_norm(config, config.n_embd)
        self.ffn = FFN(config)
        self.qbnn: nn.Module | None
        if config.mode == "layered":
            self.qbnn = QBNNBranch(config)
        elif config.mode == "brain":
            self.qbnn = BrainNeuronLayer(config.n_embd, 2 * config.brain_neurons, config.n_embd,
                                         density=BRAIN_FFN_DENSITY, gain=BRAIN_FFN_GAIN, steps=config.brain_steps)
        else:
            self.qbnn = None

    def zero_residual_writes(self) -> None:
        """Make every branch write zero into the residual stream, so that the block starts as the identity.

        Zeroed: the attention and FFN output projections, brain's QBNN output layer, and in layered mode the gain
        of the QBNN branch's last norm: that branch ends in ``GELU(LN(.))`` with no projection, and a zero gain
        (bias 0, GELU(0) = 0) makes it write zero while its gradient stays finite. Zeroing its last linear layer
        instead would feed the norm a zero vector, whose gradient is 1/sqrt(eps).
        """
        for linear in (self.attn.proj, self.ffn.proj):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        if isinstance(self.qbnn, BrainNeuronLayer):
            nn.init.zeros_(self.qbnn.out.weight)
            nn.init.zeros_(self.qbnn.out.bias)
        elif isinstance(self.qbnn, QBNNBranch):
            nn.init.zeros_(self.qbnn.layer2.norm.weight)

    def forward(self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | _StaticLayer | None = None,
                rope: Rope | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, present = self.attn(self.ln1(x), mask, past, rope)
        x = x + a
        u = self.ln2(x)
        if self.qbnn is None:
            return x + self.ffn(u), present
        return x.add(self.ffn(u), alpha=FFN_WEIGHT).add(self.qbnn(u), alpha=QBNN_WEIGHT), present


Mode = Literal["layered", "brain", "gpt"]

_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests and smoke runs: seconds on one CPU core.
    "tiny": dict(n_embd=64, n_ff=128, n_head=4, n_layer=2, max_seq_len=128, dropout=0.0),
    # The spec's small preset.
    "small": dict(n_embd=64, n_ff=128, n_head=4, n_layer=2, max_seq_len=256),
    # The spec's defaults of each mode; "gpt" is the layered size without QBNN terms, the baseline.
    "layered": dict(mode="layered", n_embd=256, n_ff=512, n_head=8, n_layer=6, max_seq_len=256),
    "brain": dict(mode="brain", n_embd=128, n_ff=512, n_head=4, n_layer=3, max_seq_len=256, brain_neurons=96,
                  brain_steps=2),
    "gpt": dict(mode="gpt", n_embd=256, n_ff=512, n_head=8, n_layer=6, max_seq_len=256),
    # Sizes a GPU user trains, for any mode (``preset("base", mode="brain")``; default layered), context 1024. The
    # skeleton is the same in every mode, so the modes differ only by their QBNN terms; the FFN is 4E wide, head
    # dim 64 (layered's folded keys are then 128 wide, the flash kernels' best size) and every width is a multiple
    # of 128. brain_neurons = E/2 makes brain's QBNN branch (2N neurons) E wide. At vocabulary 8000, non-embedding
    # parameters / training GFLOP per token (memory per sequence: bench/RESULTS.md, `bench_train --sizes`):
    #   base   gpt 41.9M / 0.33, layered 92.7M / 0.67, brain 59.3M / 0.52
    #   large  gpt 121.6M / 0.84, layered 273.3M / 1.81, brain 173.5M / 1.41
    "base": dict(n_embd=512, n_ff=2048, n_head=8, n_layer=12, max_seq_len=1024, brain_neurons=256),
    "large": dict(n_embd=1024, n_ff=4096, n_head=16, n_layer=9, max_seq_len=1024, brain_neurons=512),
}


@dataclass
class NeuroQConfig:
    """Every NeuroQ hyperparameter; ``n_ff`` is the FFN width (the spec's brain mode uses 4 * n_embd).

    The defaults are the spec's layered size with what won on held-out authors at the original's size and at this
    one (docs/sweep.md): rotary positions and no dropout (the spec's small models see less than an epoch). The
    model options: ``tie_embeddings`` shares the token table with the LM head; ``position="rope"`` rotates q and
    k instead of adding a learned position table (no ``pos_emb`` then; :class:`CausalSelfAttention` says how the
    QBNN term stays unrotated); ``zero_init_residual`` starts every residual write at zero (:meth:`Block.zero_residual_writes`);
    ``logit_softcap`` > 0 bounds the logits to ``cap * tanh(logits / cap)`` everywhere the model computes them
    (training, evaluation, generation), since it is part of the model's function; ``norm="rmsnorm"`` makes every
    norm an RMSNorm: ln1 and ln2 of each block, ln_f, and the norm inside each layered-mode QBNNLayer. A config
    read back from a checkpoint goes through :meth:`from_saved`, not the defaults.
    """

    mode: Mode = "layered"
    vocab_size: int = 8000
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 8
    n_layer: int = 6
    max_seq_len: int = 256
    dropout: float = 0.0
    lambda_entangle: float = 0.5
    brain_neurons: int = 96
    brain_steps: int = 2
    tie_embeddings: bool = False
    position: Literal["learned", "rope"] = "rope"
    zero_init_residual: bool = False
    logit_softcap: float = 0.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    attn_impl: Literal["sdpa", "explicit"] = "sdpa"

    def __post_init__(self) -> None:
        require(self.mode in ("layered", "brain", "gpt"), "mode", "'layered', 'brain' or 'gpt'", self.mode)
        require(self.attn_impl in ("sdpa", "explicit"), "attn_impl", "'sdpa' or 'explicit'", self.attn_impl)
        for name in ("vocab_size", "n_embd", "n_ff", "n_head", "n_layer", "max_seq_len", "brain_neurons",
                     "brain_steps"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, name, "a positive integer", value)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        require(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        require(is_number(self.lambda_entangle), "lambda_entangle", "finite", self.lambda_entangle)
        for name in ("tie_embeddings", "zero_init_residual"):
            require(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        require(self.position in ("learned", "rope"), "position", "'learned' or 'rope'", self.position)
        if self.position == "rope":
            head_dim = self.n_embd // self.n_head
            require(head_dim % 2 == 0, "position", f"'learned' when the head dim n_embd / n_head = {head_dim} is odd "
                    "(rope rotates pairs of features)", self.position)
        require(is_number(self.logit_softcap) and self.logit_softcap >= 0, "logit_softcap", "a number >= 0 (0 = off)",
                self.logit_softcap)
        require(self.norm in ("layernorm", "rmsnorm"), "norm", "'layernorm' or 'rmsnorm'", self.norm)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NeuroQConfig:
        """A named configuration (``tiny``, ``small``, ``layered``, ``brain``, ``gpt``, ``base``, ``large``) with fields
        overridden."""
        require(name in _PRESETS, "preset", f"one of {sorted(_PRESETS)}", name)
        return cls(**{**_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuroQConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused, since they mean another architecture."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown NeuroQConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> NeuroQConfig:
        """:meth:`from_dict` for a config an older neuroq stored: the fields it lacks mean the model it trained."""
        return cls.from_dict({**_LEGACY_FIELDS, **data})


# What each field added after the first checkpoints meant before it existed. Defaults move with evidence; a stored
# config that lacks a field must keep the model it was trained as, not pick up today's default (rope would drop
# its learned position table).
_LEGACY_FIELDS: dict[str, Any] = {"position": "learned", "zero_init_residual": False, "logit_softcap": 0.0,
                                 "norm": "layernorm"}


class NeuroQOutput(NamedTuple):
    logits: Tensor
    loss: Tensor | None
    past_key_values: KVCache | None


class NeuroQ(nn.Module):
    def __init__(self, config: NeuroQConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        if config.zero_init_residual:
            for block in self.blocks:
                block.zero_residual_writes()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (BrainNeuronLayer, CausalSelfAttention, QBNNLayer)):
            module.reset_parameters()

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> NeuroQOutput:
        """Logits ``(B, T, V)`` for ``idx`` ``(B, T)``; loss when ``targets`` are given (ignore_index -100).

        ``attention_mask`` ``(B, T_past + T)`` marks real tokens with 1 and left padding with 0; positions count
        real tokens only, so a left-padded row computes what its unpadded prompt computes. ``use_cache`` returns
        the per-layer KV cache to pass back as ``past_key_values`` with the next tokens. ``logits_to_keep=n``
        computes the LM head on the last n positions only (generation needs one), 0 = all.
        """
        B, T = idx.shape
        t_past = past_key_values[0][0].size(2) if past_key_values is not None else 0
        total = t_past + T
        if total > self.config.max_seq_len:
            raise ValueError(f"sequence of {total} tokens exceeds max_seq_len={self.config.max_seq_len}: "
                             "truncate the input or use a model with a longer context")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, total):
            raise ValueError(f"attention_mask must have shape {(B, total)} (batch, past + new tokens), "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask is None:
            pos = torch.arange(t_past, total, device=idx.device).unsqueeze(0)
        else:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, t_past:]
        mask = _attention_mask(attention_mask, T, t_past, idx.device)

        x, rope = self._embed(idx, pos)
        presents: KVCache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, mask, past_key_values[i] if past_key_values is not None else None, rope)
            presents.append(present)
        x = self.ln_f(x)

        loss = None
        if targets is not None:
            logits = self._logits(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        else:
            logits = self._logits(x[:, -logits_to_keep:] if logits_to_keep else x)
        return NeuroQOutput(logits, loss, presents if use_cache else None)

    def _embed(self, idx: Tensor, pos: Tensor) -> tuple[Tensor, Rope | None]:
        """The blocks' input for tokens at positions ``pos``, and the rotation tables when positions are rotary."""
        if self.pos_emb is not None:
            return self.drop(self.tok_emb(idx) + self.pos_emb(pos)), None
        return self.drop(self.tok_emb(idx)), rope_tables(pos, self.config.n_embd // self.config.n_head)

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def decode_step(self, idx: Tensor, position_ids: Tensor, mask: Tensor, cache: StaticKVCache, write_at: Tensor
                    ) -> Tensor:
        """Next-token logits ``(B, V)`` for one new token per row, through a :class:`StaticKVCache`.

        ``idx`` and ``position_ids`` ``(B, 1)``; ``write_at`` ``(1,)`` the cache column of the new token;
        ``mask`` boolean ``(B, 1, 1, K)`` over the first K columns, True = may attend (the row's real tokens up to
        and including this one). Every argument is a tensor of fixed shape for a given K, so
        ``torch.compile(mode="reduce-overhead")`` can capture the step once and replay it.
        """
        x, rope = self._embed(idx, position_ids)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values):
            x, _ = block(x, mask, _StaticLayer(keys, values, write_at), rope)
        return self._logits(self.ln_f(x))[:, -1]

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (a tied table once); ``non_embedding`` leaves out the lookup tables: the learned
        position table and an untied token table (a tied one is also the LM head's matrix, so it stays)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self._lookup_params() if non_embedding else n

    def _lookup_params(self) -> int:
        """Elements of the tables that are only looked up, never multiplied."""
        n = self.pos_emb.weight.numel() if self.pos_emb is not None else 0
        return n if self.config.tie_embeddings else n + self.tok_emb.weight.numel()

    def flops_per_token(self) -> float:
        """Training FLOPs per token at full context (forward + backward = 3 x forward), nanoGPT/PaLM style.

        ``6 * U + 6 * L * T * H * (d_k + d)`` where U counts the weight elements multiplied per token (every
        matrix of rank >= 2 once, plus brain mode's reuse: its shared q/k refiner runs twice per token and each
        recurrence step reuses W and J) and the second term is the attention scores (key width d_k = 2d in
        layered mode, the concatenated features) and the weighted sum of values. Element-wise ops are ignored
        (norms, the rotary rotation, the logit soft-cap), and the LM head's matrix counts once whether or not it is
        the token table too, so the model options leave the count as it is (rope removes a lookup table only).
        """
        cfg = self.config
        uses = sum(p.numel() for p in self.parameters() if p.dim() >= 2) - self._lookup_params()
        for block in self.blocks:
            refine = block.attn.refine
            if refine is not None:
                uses += sum(p.numel() for p in refine.parameters() if p.dim() >= 2)  # second call, on k
                uses += 2 * refine.recurrent_weight_uses()
            if isinstance(block.qbnn, BrainNeuronLayer):
                uses += block.qbnn.recurrent_weight_uses()
        head_dim = cfg.n_embd // cfg.n_head
        key_dim = 2 * head_dim if cfg.mode == "layered" else head_dim
        attention = cfg.n_layer * cfg.max_seq_len * cfg.n_head * (key_dim + head_dim)
        return 6.0 * (uses + attention)

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware peak (e.g. 989e12 for H100 bf16)."""
        return self.flops_per_token() * tokens_per_second / peak_flops

    def configure_optimizer(self, weight_decay: float, lr: float, betas: tuple[float, float], device_type: str
                            ) -> torch.optim.AdamW:
        """AdamW decaying matrices and embeddings only; biases, norms, gains and theta are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # The fused kernel (one launch for all parameters) exists for CUDA and, since torch 2.4, for CPU.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type in ("cuda", "cpu"))


def _attention_mask(attention_mask: Tensor | None, T: int, t_past: int, device: torch.device) -> Tensor | None:
    """Boolean ``(B|1, 1, T, t_past+T)`` mask, True = may attend; None = plain causal (SDPA's is_causal path).

    SDPA's ``is_causal`` aligns the triangle top-left, which is wrong once there is a past, hence the explicit
    mask then. A query at a padding position would see no key at all and softmax would give NaN; it may see
    itself instead (real queries never see padding, so their outputs are unchanged).
    """
    if attention_mask is None and t_past == 0:
        return None
    q_pos = torch.arange(t_past, t_past + T, device=device).unsqueeze(1)
    k_pos = torch.arange(t_past + T, device=device).unsqueeze(0)
    causal = k_pos <= q_pos
    if attention_mask is None:
        return causal[None, None]
    real = attention_mask.bool()[:, None, None, :]
    return causal & (real | (k_pos == q_pos))
