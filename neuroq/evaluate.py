"""Evaluation: validation loss and perplexity, bits per character, and generation-quality statistics.

Bits per character is the number that compares models across tokenizers: the total negative log-likelihood
(in bits) of a text divided by its number of characters. :func:`score_text` makes the token count and the
character count describe the same text: each document is encoded as ``[bos] + tokens + [eos]``, every token
after bos (eos included) is predicted exactly once, and the characters counted are those of the documents as
given (before the tokenizer's NFKC normalisation).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from neuroq.errors import ConfigError
from neuroq.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

if TYPE_CHECKING:
    from neuroq.tokenizer import NeuroQTokenizer

__all__ = ["evaluate_blocks", "generation_stats", "score_text", "unigram_bits_per_char"]

_IGNORE = -100


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _sum_nll(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None
) -> tuple[float, int]:
    """Summed next-token NLL (nats) and number of scored targets; the reduction runs in fp32 under autocast."""
    with _autocast(x.device, autocast_dtype):
        logits = model(x).logits
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=_IGNORE, reduction="sum")
    return float(nll), int((y != _IGNORE).sum())


@torch.no_grad()
def evaluate_blocks(
    model: torch.nn.Module,
    blocks: torch.utils.data.Dataset,
    batch_size: int,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean next-token loss over (the first ``max_batches`` batches of) a dataset of ``(x, y)`` blocks.

    Blocks are read in order, so repeated calls score the same tokens. Returns ``loss``, ``perplexity`` and
    ``n_tokens`` (the number of targets scored, for weighting partial results, e.g. across DDP ranks). The
    model's train/eval mode is restored afterwards, and no random numbers are drawn.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, device)
    n = len(blocks)  # type: ignore[arg-type]
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            items = [blocks[i] for i in range(start, min(start + batch_size, n))]
            x = torch.stack([torch.as_tensor(it[0]) for it in items]).long().to(device)
            y = torch.stack([torch.as_tensor(it[1]) for it in items]).long().to(device)
            nll, k = _sum_nll(model, x, y, autocast_dtype)
            total += nll
            count += k
    finally:
        model.train(was_training)
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": _perplexity(loss), "n_tokens": float(count)}


def _perplexity(loss: float) -> float:
    # exp overflows past ~709 nats; an untrained model is far below that, a broken one is reported as inf.
    return math.exp(loss) if loss < 700 else float("inf")


def _windows(ids: list[int], context: int, stride: int) -> Iterable[tuple[list[int], list[int]]]:
    """(input, target) windows over one document so that every target ``ids[1:]`` is scored exactly once.

    The first window predicts up to ``context`` tokens; each next one moves ``stride`` tokens on and masks the
    targets already scored, so every later token is predicted with at least ``context - stride`` tokens of
    history.
    """
    last = len(ids) - 1  # index of the last target
    done = 0  # targets ids[1..done] are scored
    while done < last:
        end = min(context, last) if done == 0 else min(done + stride, last)
        start = max(0, end - context)
        inp = ids[start:end]
        tgt = ids[start + 1 : end + 1]
        masked = done - start
        yield inp, [_IGNORE] * masked + tgt[masked:]
        done = end


@torch.no_grad()
def score_text(
    model: torch.nn.Module,
    tokenizer: NeuroQTokenizer,
    text: str | Sequence[str],
    device: str | torch.device | None = None,
    batch_size: int = 8,
    *,
    stride: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Loss, perplexity and bits per character of a text (one document) or a list of documents.

    Documents longer than the model's context are scored in windows of ``max_seq_len`` moved by ``stride``
    (default half the context). Returns ``loss`` (nats per token), ``perplexity``, ``bits_per_char``,
    ``n_chars`` and ``n_tokens`` (tokens predicted, eos included).
    """
    docs = [d for d in ([text] if isinstance(text, str) else text) if d]
    if not docs:
        raise ConfigError("text is empty: nothing to score")
    context = int(model.config.max_seq_len)
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context:
        raise ConfigError(f"stride must be in [1, {context}] (the model's max_seq_len), got {stride}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model, device)

    windows = [
        w
        for ids in tokenizer.encode_batch(docs, add_bos=True, add_eos=True)
        for w in _windows(list(ids), context, stride)
    ]
    # Similar lengths in one batch waste less padding; right padding is invisible to causal attention.
    windows.sort(key=lambda w: len(w[0]), reverse=True)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = len(batch[0][0])
            x = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
            y = torch.full((len(batch), width), _IGNORE, dtype=torch.long)
            for row, (inp, tgt) in enumerate(batch):
                x[row, : len(inp)] = torch.tensor(inp)
                y[row, : len(tgt)] = torch.tensor(tgt)
            nll, k = _sum_nll(model, x.to(device), y.to(device), autocast_dtype)
            total += nll
            count += k
    finally:
        model.train(was_training)

    n_chars = sum(len(d) for d in docs)
    loss = total / count
    return {
        "loss": loss,
        "perplexity": _perplexity(loss),
        "bits_per_char": total / math.log(2) / n_chars,
        "n_chars": n_chars,
        "n_tokens": count,
    }


def unigram_bits_per_char(
    train_ids: Sequence[int] | np.ndarray | torch.Tensor | Sequence[np.ndarray],
    text: str | Sequence[str],
    tokenizer: NeuroQTokenizer,
) -> float:
    """Bits per character of an add-one smoothed unigram model of ``train_ids``, scored like :func:`score_text`.

    ``train_ids`` is one array of token ids or a list of them (e.g. ``PackedBlocks.shards``).

    The baseline a language model must beat: it knows token frequencies and nothing about context. pad and bos
    are never predicted, so their training counts are dropped.
    """
    vocab = tokenizer.vocab_size
    # Token shards are counted one at a time: a large corpus is never concatenated in memory.
    pieces = (train_ids if isinstance(train_ids, list | tuple) and train_ids
              and isinstance(train_ids[0], np.ndarray | torch.Tensor) else [train_ids])
    counts = np.zeros(vocab, dtype=np.float64)
    for piece in pieces:
        ids = np.asarray(piece.cpu() if isinstance(piece, torch.Tensor) else piece, dtype=np.int64).ravel()
        counts += np.bincount(ids, minlength=vocab)[:vocab]
    counts[[PAD_ID, BOS_ID]] = 0.0
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab)

    docs = [d for d in ([text] if isinstance(text, str) else text) if d]
    if not docs:
        raise ConfigError("text is empty: nothing to score")
    targets = np.concatenate([np.asarray(ids_, dtype=np.int64) for ids_ in tokenizer.encode_batch(docs, add_eos=True)])
    nll = -float(log_p[targets].sum())
    return nll / math.log(2) / sum(len(d) for d in docs)


def generation_stats(samples: Sequence[Sequence[int]] | Sequence[str], tokenizer: NeuroQTokenizer) -> dict[str, float]:
    """Diversity and degeneration statistics over generated samples (texts or token-id lists).

    ``distinct_1``/``distinct_2``: unique uni/bigrams over all samples divided by their total (Li et al., 2016);
    ``repeated_3gram_rate``: share of 3-grams that repeat one seen earlier in the same sample (loops);
    ``unk_rate`` and ``byte_token_rate``: share of ``<unk>`` and byte-fallback tokens (the tokenizer's gaps).
    pad, bos and eos are not counted.
    """
    seqs: list[list[int]] = [
        [int(t) for t in (tokenizer.encode(s) if isinstance(s, str) else s) if int(t) not in (PAD_ID, BOS_ID, EOS_ID)]
        for s in samples
    ]
    n_tokens = sum(len(s) for s in seqs)
    unigrams: set[int] = set()
    bigrams: set[tuple[int, ...]] = set()
    n_bigrams = n_trigrams = repeated = unk = byte = 0
    for seq in seqs:
        unigrams.update(seq)
        pairs = list(zip(seq, seq[1:]))
        bigrams.update(pairs)
        n_bigrams += len(pairs)
        seen: set[tuple[int, int, int]] = set()
        for tri in zip(seq, seq[1:], seq[2:]):
            repeated += tri in seen
            seen.add(tri)
            n_trigrams += 1
        unk += sum(t == UNK_ID for t in seq)
        byte += sum(bool(tokenizer.is_byte(t)) for t in seq)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {
        "distinct_1": ratio(len(unigrams), n_tokens),
        "distinct_2": ratio(len(bigrams), n_bigrams),
        "repeated_3gram_rate": ratio(repeated, n_trigrams),
        "unk_rate": ratio(unk, n_tokens),
        "byte_token_rate": ratio(byte, n_tokens),
        "mean_tokens": ratio(n_tokens, len(seqs)),
    }
