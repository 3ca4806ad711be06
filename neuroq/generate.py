"""Batched text generation for NeuroQ: left-padded prompts, KV cache, and the sampling knobs users rely on.

All prompts (each repeated ``n`` times) decode together in one batch: rows are left-padded with an attention
mask, so every row computes exactly what it would alone. :func:`generate_ids` is the token-level core (no
tokenizer needed); :func:`generate` wraps it with encoding and decoding.

The decode loop keeps every row's state on the device (history, finished, finish reason) and does no Python per
row per token: the filters are batched (neuroq.sampling), stop tokens are one ``isin``, and the model runs through
the decoder ``GenerationConfig.decoder`` picks (neuroq.decoding). Python touches single rows only for stop
strings (decoded text) and for ``on_step`` (streaming). Against the per-row loop this replaced: the same tokens
for greedy decoding and for sampling with ``top_k=0``; with top-k on, a seed picks other samples than before
from the same distribution (neuroq.sampling says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import InitVar, dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from neuroq.errors import ConfigError
from neuroq.decoding import DecoderKind, make_decoder
from neuroq.model import NeuroQ
from neuroq.sampling import apply_repetition_penalty_, ban_repeated_ngrams_, sample_next
from neuroq.tokenizer import EOS_ID, PAD_ID, USER_ID, NeuroQTokenizer
from neuroq.validation import is_int, is_number, require

__all__ = ["GenerationConfig", "Sample", "DecodeStep", "StepHook", "generate", "generate_ids"]

FinishReason = Literal["stop", "length", "cancelled"]
_DEFAULT_MAX_NEW_TOKENS = 64
# cuDNN attention (SDPA's first choice for bf16 on Hopper) plans a graph for every new key length, ~6 ms per layer,
# and decoding makes a new length every step: measured 13 vs 93 tok/s on an H100. The other kernels need no plan.
_DECODE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class GenerationConfig:
    """Sampling knobs; every value is checked here and a bad one raises :class:`ConfigError` naming it.

    Temperature schedule: the temperature moves linearly from ``temp_max`` at the first new token to
    ``temp_min`` at the last (step ``i`` of ``max_new_tokens`` uses ``temp_max + (temp_min - temp_max) * i /
    (max_new_tokens - 1)``), so early tokens explore and later ones settle. An unset bound takes ``temperature``;
    with neither set the temperature is constant. A temperature of 0 is greedy decoding.

    ``top_k=0``, ``top_p=1``, ``repetition_penalty=1`` and ``no_repeat_ngram_size=0`` switch those filters off.
    ``max_length`` is accepted as an alias of ``max_new_tokens`` (the original API's name).

    ``decoder`` is how the KV cache runs (neuroq.decoding): ``auto`` (a captured static-cache step on CUDA, the
    static cache eagerly elsewhere), ``dynamic``, ``static`` or ``graph``; every one gives the same tokens up to
    rounding. ``use_cache=False`` recomputes the whole context each step instead (a reference, slow).
    """

    max_new_tokens: int = _DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.8
    temp_min: float | None = None
    temp_max: float | None = None
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 3
    stop: tuple[str, ...] = ()
    stop_at_user: bool = True
    seed: int | None = None
    n: int = 1
    use_cache: bool = True
    decoder: DecoderKind = "auto"
    truncation: Literal["left", "error"] = "left"
    max_length: InitVar[int | None] = None

    def __post_init__(self, max_length: int | None) -> None:
        if max_length is not None:
            if self.max_new_tokens not in (_DEFAULT_MAX_NEW_TOKENS, max_length):
                raise ConfigError(f"max_length ({max_length}) is an alias of max_new_tokens "
                                  f"({self.max_new_tokens}): give one of them")
            self.max_new_tokens = max_length
        for name, minimum in (("max_new_tokens", 1), ("top_k", 0), ("no_repeat_ngram_size", 0), ("n", 1)):
            value = getattr(self, name)
            require(is_int(value) and value >= minimum, name, f"an integer >= {minimum}", value)
        for name in ("temperature", "temp_min", "temp_max"):
            value = getattr(self, name)
            require(value is None or (is_number(value) and value >= 0), name, "a finite number >= 0", value)
        if self.low_temperature > self.high_temperature:
            raise ConfigError(f"temp_min ({self.low_temperature}) must be <= temp_max ({self.high_temperature})")
        require(is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        require(is_number(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "> 0",
                self.repetition_penalty)
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        require(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings", self.stop)
        require(self.seed is None or is_int(self.seed), "seed", "an integer or None", self.seed)
        require(self.decoder in ("auto", "dynamic", "static", "graph"), "decoder",
                "'auto', 'dynamic', 'static' or 'graph'", self.decoder)
        require(self.truncation in ("left", "error"), "truncation", "'left' or 'error'", self.truncation)

    @property
    def low_temperature(self) -> float:
        return self.temperature if self.temp_min is None else self.temp_min

    @property
    def high_temperature(self) -> float:
        return self.temperature if self.temp_max is None else self.temp_max

    def temperature_at(self, step: int) -> float:
        """Temperature for the ``step``-th new token (0-based), per the schedule in the class docstring."""
        if self.max_new_tokens == 1:
            return self.high_temperature
        frac = step / (self.max_new_tokens - 1)
        return self.high_temperature + (self.low_temperature - self.high_temperature) * frac


@dataclass
class Sample:
    """One completion. ``token_ids`` are the completion's ids without the eos/``<USER>`` that ended it;
    ``text`` is their decoding, cut before a matched stop string."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class DecodeStep:
    """What one step of the batched decoder produced, for streaming (``generate_ids(on_step=...)``).

    Rows are numbered as the samples come back: row ``r`` is sample ``r % n`` of prompt ``r // n``.
    ``tokens[r]`` is the id row ``r`` appended to its completion at this step (exactly the next element of its
    ``Sample.token_ids``), or None when it appended nothing (it finished earlier, or at this step on eos /
    ``<USER>``, which are not part of a completion). ``finished[r]`` is the row's finish reason once it has one
    (set at the step it finishes and at every later step; "length" at the last step). A stop string is matched on the decoded text: the row
    finishes with "stop" at the step whose token completes it, and ``Sample.text`` is then cut before it, so a
    streaming server should hold back text that may still turn into a stop string.
    """

    index: int
    tokens: list[int | None]
    finished: list[FinishReason | None]


StepHook = Callable[[DecodeStep], "Iterable[int] | None"]
"""Called after every decoding step; returns the rows to stop now (their consumer went away), or None.

A stopped row finishes with "cancelled" and keeps the tokens it had; the other rows are not affected, and
decoding ends as soon as no row is left. The hook runs on the decoding thread between two steps: it must not
block (hand the tokens to a queue)."""


def _fit_prompt(prompt: Sequence[int], budget: int, truncation: str, index: int) -> list[int]:
    if not prompt:
        raise ConfigError(f"prompt {index} is empty: give at least one token (e.g. bos)")
    if len(prompt) <= budget:
        return list(prompt)
    if truncation == "error":
        raise ConfigError(f"prompt {index} has {len(prompt)} tokens but only {budget} fit (max_seq_len minus "
                          "max_new_tokens): shorten it, lower max_new_tokens, or use truncation='left'")
    return list(prompt[len(prompt) - budget:])


def _left_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Left-padded ids and their attention mask (None when no row is padded: SDPA keeps its causal fast path)."""
    width = max(map(len, rows))
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        idx[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    padded = any(len(row) < width for row in rows)
    return idx.to(device), mask.to(device) if padded else None


class _Sampler:
    """Picks every row's next token at once: repetition penalty, n-gram ban, scheduled temperature, top-k, top-p.

    It keeps what the filters need on the device: ``history`` (the prompt, then every fed token; left padding
    holds the row's last prompt token, which the penalty may count twice) and ``real`` (which columns are a
    row's own tokens, for the n-gram ban).
    """

    def __init__(self, config: GenerationConfig, idx: Tensor, attention_mask: Tensor | None, vocab_size: int):
        self.config = config
        self.vocab_size = vocab_size
        rows, width = idx.shape
        self.real = torch.zeros((rows, width + config.max_new_tokens), dtype=torch.bool, device=idx.device)
        self.real[:, :width] = True if attention_mask is None else attention_mask.bool()
        prompt = torch.where(self.real[:, :width], idx, idx[:, -1:])
        self.history = torch.cat([prompt, prompt.new_zeros((rows, config.max_new_tokens))], dim=1)
        self.length = width
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(device=idx.device).manual_seed(config.seed)

    def __call__(self, logits: Tensor, step: int) -> Tensor:
        config = self.config
        logits = logits.float()  # the decoder's fresh output (or its fp32 copy): the filters write into it
        if config.repetition_penalty != 1.0:
            apply_repetition_penalty_(logits, self.history[:, :self.length], config.repetition_penalty)
        if config.no_repeat_ngram_size:
            ban_repeated_ngrams_(logits, self.history[:, :self.length], self.real[:, :self.length],
                                 config.no_repeat_ngram_size)
        return sample_next(logits, config.temperature_at(step), config.top_k, config.top_p, self.generator)

    def record(self, fed: Tensor, own: Tensor) -> None:
        """Note the tokens fed back (``fed``, padding for finished rows); ``own`` marks those a row generated."""
        self.history[:, self.length] = fed
        self.real[:, self.length] = own
        self.length += 1


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


@torch.inference_mode()
@sdpa_kernel(_DECODE_ATTENTION)
def generate_ids(
    model: NeuroQ,
    prompt_ids: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    eos_ids: Sequence[int] = (EOS_ID,),
    user_id: int = USER_ID,
    pad_id: int = PAD_ID,
    decode: Callable[[list[int]], str] | None = None,
    on_step: StepHook | None = None,
) -> list[list[Sample]]:
    """Complete each prompt (token ids) ``config.n`` times; returns one list of n samples per prompt.

    A row stops at any of ``eos_ids``, at ``user_id`` when ``config.stop_at_user``, or at a stop string (which
    needs ``decode``; without it texts are empty). ``on_step`` streams every step's new tokens and may stop rows
    (:class:`DecodeStep`, :data:`StepHook`). The model runs in eval mode and is put back as it was.
    """
    config = config or GenerationConfig()
    context = model.config.max_seq_len
    if config.max_new_tokens >= context:
        raise ConfigError(f"max_new_tokens ({config.max_new_tokens}) must be < the model's max_seq_len ({context})")
    if config.stop and decode is None:
        raise ConfigError("stop strings need a decode function (use generate() with a tokenizer)")
    if not prompt_ids:
        return []
    prompts = [_fit_prompt(p, context - config.max_new_tokens, config.truncation, i) for i, p in enumerate(prompt_ids)]
    rows = [p for p in prompts for _ in range(config.n)]
    device = next(model.parameters()).device
    stop_ids = torch.tensor(sorted(set(eos_ids) | ({user_id} if config.stop_at_user else set())), device=device)
    idx, attn_mask = _left_pad(rows, pad_id, device)
    width, batch = idx.size(1), len(rows)
    sampler = _Sampler(config, idx, attn_mask, model.config.vocab_size)
    # Per row, on the device: finished yet, and why (an index into _REASONS); the completions are the sampler's
    # history after the prompt, so nothing per row is touched in Python unless a stop string or a hook needs it.
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    reason = torch.zeros(batch, dtype=torch.uint8, device=device)
    cut_texts: dict[int, str] = {}

    was_training = model.training
    model.eval()
    try:
        decoder = make_decoder(config.decoder if config.use_cache else "recompute", model, idx, attn_mask,
                               config.max_new_tokens, pad_id)
        logits = decoder.prefill()
        for step in range(config.max_new_tokens):
            next_ids = sampler(logits[:batch], step)
            live = ~finished
            stopped = live & torch.isin(next_ids, stop_ids)
            own = live & ~stopped
            reason = torch.where(stopped, _STOP, reason)
            finished = finished | stopped
            fed = torch.where(own, next_ids, pad_id)
            sampler.record(fed, own)
            if config.stop:
                finished, reason = _match_stop_strings(sampler, width, own, finished, reason, config.stop, decode,
                                                       cut_texts)
            last = step == config.max_new_tokens - 1
            if last:
                reason = torch.where(finished, reason, _LENGTH)
            if on_step is not None:
                cancelled = on_step(_step_event(step, fed, own, reason))
                if cancelled:
                    rows_ = torch.tensor(list(cancelled), dtype=torch.long, device=device)
                    reason[rows_] = torch.where(reason[rows_] == 0, _CANCELLED, reason[rows_])
                    finished[rows_] = True
            if last or bool(finished.all()):
                break
            # Finished rows keep decoding padding: rows never attend to each other, so nothing else changes.
            if decoder.rows > batch:
                fed = torch.cat([fed, fed.new_full((decoder.rows - batch,), pad_id)])
            logits = decoder.step(fed)
    finally:
        model.train(was_training)

    lengths = (sampler.real[:, width:].sum(dim=1)).tolist()
    generated = sampler.history[:, width:].tolist()
    reasons = reason.tolist()
    samples = []
    for r in range(batch):
        token_ids = generated[r][:lengths[r]]
        text = cut_texts.get(r)
        if text is None:
            text = decode(token_ids) if decode else ""
        samples.append(Sample(text=text, token_ids=token_ids, prompt_tokens=len(rows[r]),
                              completion_tokens=lengths[r], finish_reason=_REASONS[reasons[r]] or "length"))
    return [samples[i * config.n:(i + 1) * config.n] for i in range(len(prompts))]


_REASONS: tuple[FinishReason | None, ...] = (None, "stop", "length", "cancelled")
_STOP, _LENGTH, _CANCELLED = 1, 2, 3


def _step_event(step: int, fed: Tensor, own: Tensor, reason: Tensor) -> DecodeStep:
    tokens = torch.where(own, fed, -1).tolist()
    return DecodeStep(step, [t if t >= 0 else None for t in tokens], [_REASONS[c] for c in reason.tolist()])


def _match_stop_strings(sampler: _Sampler, width: int, own: Tensor, finished: Tensor, reason: Tensor,
                        stops: Sequence[str], decode: Callable[[list[int]], str], cut_texts: dict[int, str]
                        ) -> tuple[Tensor, Tensor]:
    """Stop strings live in decoded text, so this is per row in Python: only rows that just grew are decoded."""
    grown = own.nonzero().flatten().tolist()
    if not grown:
        return finished, reason
    history = sampler.history[grown, width:sampler.length].tolist()
    real = sampler.real[grown, width:sampler.length].tolist()
    hits = []
    for r, ids, marks in zip(grown, history, real):
        text = decode([t for t, m in zip(ids, marks) if m])
        cut = _first_stop(text, stops)
        if cut is not None:
            cut_texts[r] = text[:cut]
            hits.append(r)
    if hits:
        rows = torch.tensor(hits, device=finished.device)
        finished, reason = finished.clone(), reason.clone()
        finished[rows] = True
        reason[rows] = _STOP
    return finished, reason


def generate(
    model: NeuroQ,
    tokenizer: NeuroQTokenizer,
    prompts: str | Sequence[str],
    config: GenerationConfig | None = None,
    device: torch.device | str | None = None,
) -> list[list[Sample]]:
    """Complete text prompts (bos is prepended, as in training); one list of ``config.n`` samples per prompt.

    ``device`` moves the model there first; by default it runs where the model is.
    """
    if device is not None:
        model.to(device)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenizer.encode_batch(texts, add_bos=True)
    return generate_ids(model, ids, config, decode=tokenizer.decode)
