"""How the batched decoder runs the model: one object per KV-cache strategy, each with ``prefill()`` (the prompts'
next-token logits) and ``step(tokens)`` (feed one token per row, get the next logits).

  recompute  no cache: the whole context again every step (the reference the caches are tested against)
  dynamic    a growing :data:`~neuroq.model.KVCache`: every step concatenates one column onto every layer's cache
  static     a :class:`~neuroq.model.StaticKVCache` written in place; the step attends over the written columns
  graph      the static cache with one fixed-shape step compiled by ``torch.compile(mode="reduce-overhead")``,
             which on CUDA captures it as a CUDA graph and replays it (no Python or kernel launches per layer).
             The batch is padded to a power of two and the cache spans max_seq_len, so a served model compiles
             once per batch bucket; caches are kept per (model, bucket) because a graph replays fixed addresses.
             On CPU the same code runs through inductor without graphs.

``auto`` picks graph on CUDA, where a small model's step is bound by kernel launches that a graph removes, and
static elsewhere: on 2 CPU cores static is as fast as dynamic or faster (bench/RESULTS.md), and a CPU has no
launches to save, while compiling costs seconds per batch shape.
Rows are left-padded: each row's positions count its real tokens, and a row attends to its own real tokens only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from neuroq.model import KVCache, NeuroQ, StaticKVCache

__all__ = ["Decoder", "DecoderKind", "make_decoder", "resolve_decoder"]

DecoderKind = Literal["auto", "recompute", "dynamic", "static", "graph"]

_captured_step: Callable[..., Tensor] | None = None
# Static caches of the graph decoder by model and (rows, dtype, device): a captured step replays their addresses.
_graph_caches: weakref.WeakKeyDictionary[NeuroQ, dict[tuple, StaticKVCache]] = weakref.WeakKeyDictionary()


def resolve_decoder(kind: DecoderKind, device: torch.device) -> DecoderKind:
    if kind != "auto":
        return kind
    return "graph" if device.type == "cuda" else "static"


class Decoder:
    """Runs prefill and decode steps for ``rows`` (left-padded ids ``idx`` with their 0/1 ``attention_mask``)."""

    rows: int  # rows the model runs, which may exceed the caller's (graph: padded to a bucket)

    def prefill(self) -> Tensor:
        raise NotImplementedError

    def step(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError


class _Recompute(Decoder):
    def __init__(self, model: NeuroQ, idx: Tensor, attention_mask: Tensor | None):
        self.model, self.idx, self.mask, self.rows = model, idx, attention_mask, idx.size(0)

    def prefill(self) -> Tensor:
        return self.model(self.idx, attention_mask=self.mask, logits_to_keep=1).logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        self.idx = torch.cat([self.idx, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(tokens[:, None])], dim=1)
        return self.prefill()


class _Dynamic(Decoder):
    def __init__(self, model: NeuroQ, idx: Tensor, attention_mask: Tensor | None):
        self.model, self.idx, self.mask, self.rows = model, idx, attention_mask, idx.size(0)
        self.past: KVCache | None = None

    def prefill(self) -> Tensor:
        out = self.model(self.idx, attention_mask=self.mask, use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(tokens[:, None])], dim=1)
        out = self.model(tokens[:, None], attention_mask=self.mask, past_key_values=self.past, use_cache=True,
                         logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1]


class _Static(Decoder):
    """The static cache, eager: each step attends over the columns written so far (no masked-out work)."""

    def __init__(self, model: NeuroQ, idx: Tensor, attention_mask: Tensor | None, length: int):
        self.model, self.idx, self.mask, self.rows = model, idx, attention_mask, idx.size(0)
        self.length = length
        self.width = idx.size(1)  # the column the next token goes to
        # valid[r, c]: row r attends to column c (its real prompt tokens, then every fed token, as the dynamic
        # cache's mask does); positions[r]: the next token's position id, i.e. the real tokens before it.
        self.valid = torch.zeros((self.rows, length), dtype=torch.bool, device=idx.device)
        self.valid[:, :self.width] = True if attention_mask is None else attention_mask.bool()
        self.positions = self.valid.sum(dim=1, keepdim=True)
        self.cache: StaticKVCache | None = None

    def prefill(self) -> Tensor:
        out = self.model(self.idx, attention_mask=self.mask, use_cache=True, logits_to_keep=1)
        self.cache = self._cache(out.past_key_values)
        return out.logits[:, -1]

    def _cache(self, past: KVCache) -> StaticKVCache:
        return StaticKVCache(past, self.length)

    def step(self, tokens: Tensor) -> Tensor:
        column = self.width
        self.width += 1
        self.valid[:, column] = True
        write_at = torch.tensor([column], device=tokens.device)
        logits = self._run(tokens[:, None], self.positions, write_at, column + 1)
        self.positions = self.positions + 1
        return logits

    def _run(self, idx: Tensor, positions: Tensor, write_at: Tensor, columns: int) -> Tensor:
        mask = self.valid[:, None, None, :columns]
        return self.model.decode_step(idx, positions, mask, self.cache, write_at)


class _Graph(_Static):
    """The static cache with a compiled, fixed-shape step: every step attends over all max_seq_len columns."""

    def _cache(self, past: KVCache) -> StaticKVCache:
        k = past[0][0]
        pool = _graph_caches.setdefault(self.model, {})
        key = (self.rows, k.dtype, k.device)
        if key not in pool:
            pool[key] = StaticKVCache(past, self.length)
            for tensor in (*pool[key].keys, *pool[key].values):
                torch._dynamo.mark_static_address(tensor)  # same buffers every replay: no copy into the graph
        else:
            pool[key].fill(past)
        return pool[key]

    def _run(self, idx: Tensor, positions: Tensor, write_at: Tensor, columns: int) -> Tensor:
        global _captured_step
        if _captured_step is None:
            _captured_step = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        if idx.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
        # Unwritten columns are False in valid, so the full-width mask hides them; the logits are copied out of
        # the graph's output buffer, which the next replay overwrites.
        return _captured_step(self.model, idx, positions, self.valid[:, None, None, :], self.cache, write_at).clone()


def _decode_step(model: NeuroQ, idx: Tensor, positions: Tensor, mask: Tensor, cache: StaticKVCache,
                 write_at: Tensor) -> Tensor:
    return model.decode_step(idx, positions, mask, cache, write_at)


def make_decoder(kind: DecoderKind, model: NeuroQ, idx: Tensor, attention_mask: Tensor | None, new_tokens: int,
                 pad_id: int) -> Decoder:
    """A decoder of ``kind`` (auto resolved by the device) for left-padded ``idx`` that will take up to
    ``new_tokens`` more tokens; the graph decoder adds rows of padding up to a power of two (callers read the
    first ``idx.size(0)`` rows of its logits and feed ``pad_id`` to the others)."""
    kind = resolve_decoder(kind, idx.device)
    if kind == "recompute":
        return _Recompute(model, idx, attention_mask)
    if kind == "dynamic":
        return _Dynamic(model, idx, attention_mask)
    if kind == "static":
        return _Static(model, idx, attention_mask, idx.size(1) + new_tokens)
    rows = idx.size(0)
    bucket = 1 << (rows - 1).bit_length()
    if bucket > rows:
        # Filler rows are one real pad token each (left-padded like any short prompt); nobody reads their logits.
        filler = torch.full((bucket - rows, idx.size(1)), pad_id, dtype=idx.dtype, device=idx.device)
        idx = torch.cat([idx, filler])
        mask = attention_mask if attention_mask is not None else torch.ones_like(idx[:rows])
        filler_mask = torch.zeros_like(filler)
        filler_mask[:, -1] = 1
        attention_mask = torch.cat([mask, filler_mask])
    return _Graph(model, idx, attention_mask, model.config.max_seq_len)
