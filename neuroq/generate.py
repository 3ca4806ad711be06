"""Batched text generation for NeuroQ: left-padded prompts, KV cache, and the sampling knobs users rely on.

All prompts (each repeated ``n`` times) decode together in one batch: rows are left-padded with an attention
mask, so every row computes exactly what it would alone. :func:`generate_ids` is the token-level core (no
tokenizer needed); :func:`generate` wraps it with encoding and decoding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import InitVar, dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from neuroq.errors import ConfigError
from neuroq.model import NeuroQ
from neuroq.tokenizer import EOS_ID, PAD_ID, USER_ID, NeuroQTokenizer
from neuroq.validation import is_int, is_number, require

__all__ = ["GenerationConfig", "Sample", "DecodeStep", "StepHook", "generate", "generate_ids",
           "apply_repetition_penalty", "filter_logits", "NgramBlocker"]

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


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Make already-seen tokens less likely: positive logits are divided by ``penalty``, negative multiplied.

    (Dividing a negative logit, as the original did, would make a seen token *more* likely.)
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k, then nucleus (top-p) filtering of ``(B, V)`` logits: removed tokens get -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one).
    """
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class NgramBlocker:
    """Bans, per row, any token that would repeat an n-gram already in that row's prompt + completion."""

    def __init__(self, n: int, rows: Sequence[Sequence[int]]):
        self.n = n
        self.seqs = [list(row) for row in rows]
        self.next_tokens: list[defaultdict[tuple[int, ...], set[int]]] = []
        for seq in self.seqs:
            table: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
            for end in range(n, len(seq) + 1):
                table[tuple(seq[end - n:end - 1])].add(seq[end - 1])
            self.next_tokens.append(table)

    def add(self, row: int, token: int) -> None:
        seq = self.seqs[row]
        seq.append(token)
        if len(seq) >= self.n:
            self.next_tokens[row][tuple(seq[len(seq) - self.n:-1])].add(token)

    def banned(self, row: int) -> set[int]:
        seq = self.seqs[row]
        if len(seq) < self.n - 1:
            return set()
        return self.next_tokens[row].get(tuple(seq[len(seq) - self.n + 1:]), set())


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
    """Picks each row's next token: repetition penalty, n-gram ban, scheduled temperature, top-k, top-p."""

    def __init__(self, config: GenerationConfig, rows: Sequence[list[int]], vocab_size: int, device: torch.device):
        self.config = config
        self.seen = torch.zeros((len(rows), vocab_size), dtype=torch.bool, device=device)
        self.seen[torch.tensor([r for r, row in enumerate(rows) for _ in row], device=device),
                  torch.tensor([t for row in rows for t in row], device=device)] = True
        self.blocker = NgramBlocker(config.no_repeat_ngram_size, rows) if config.no_repeat_ngram_size else None
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def __call__(self, logits: Tensor, step: int, active: Sequence[bool]) -> Tensor:
        config = self.config
        logits = logits.float()
        if config.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, self.seen, config.repetition_penalty)
        if self.blocker is not None:
            bans = [(r, t) for r, live in enumerate(active) if live for t in self.blocker.banned(r)]
            if bans:
                ban_rows, ban_cols = zip(*bans)
                logits[list(ban_rows), list(ban_cols)] = float("-inf")
        temperature = config.temperature_at(step)
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = filter_logits(logits / temperature, config.top_k, config.top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def record(self, next_ids: Tensor, appended: Sequence[tuple[int, int]]) -> None:
        """Note the tokens just fed back: ``next_ids`` for every row, ``appended`` (row, token) for live rows."""
        self.seen.scatter_(1, next_ids.unsqueeze(1), True)
        if self.blocker is not None:
            for row, token in appended:
                self.blocker.add(row, token)


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
    stop_ids = set(eos_ids) | ({user_id} if config.stop_at_user else set())
    device = next(model.parameters()).device
    idx, attn_mask = _left_pad(rows, pad_id, device)
    sampler = _Sampler(config, rows, model.config.vocab_size, device)
    completions: list[list[int]] = [[] for _ in rows]
    reasons: list[FinishReason | None] = [None] * len(rows)
    texts: list[str | None] = [None] * len(rows)

    was_training = model.training
    model.eval()
    try:
        out = model(idx, attention_mask=attn_mask, use_cache=config.use_cache, logits_to_keep=1)
        for step in range(config.max_new_tokens):
            next_ids = sampler(out.logits[:, -1], step, [reason is None for reason in reasons])
            appended = []
            for r, token in enumerate(next_ids.tolist()):
                if reasons[r] is not None:
                    continue
                if token in stop_ids:
                    reasons[r] = "stop"
                    continue
                completions[r].append(token)
                appended.append((r, token))
                if config.stop:
                    text = decode(completions[r])
                    cut = _first_stop(text, config.stop)
                    if cut is not None:
                        texts[r], reasons[r] = text[:cut], "stop"
            if step == config.max_new_tokens - 1:
                reasons = [reason or "length" for reason in reasons]
            if on_step is not None:
                new = dict(appended)
                for r in on_step(DecodeStep(step, [new.get(r) for r in range(len(rows))], list(reasons))) or ():
                    reasons[r] = reasons[r] or "cancelled"
            if step == config.max_new_tokens - 1 or all(reasons):
                break
            # Finished rows keep decoding padding: rows never attend to each other, so nothing else changes.
            active = torch.tensor([reason is None for reason in reasons], device=device)
            next_ids = torch.where(active, next_ids, pad_id)
            sampler.record(next_ids, appended)
            next_ids = next_ids.unsqueeze(1)
            if attn_mask is not None:
                attn_mask = torch.cat([attn_mask, torch.ones_like(next_ids)], dim=1)
            if config.use_cache:
                out = model(next_ids, attention_mask=attn_mask, past_key_values=out.past_key_values, use_cache=True,
                            logits_to_keep=1)
            else:
                idx = torch.cat([idx, next_ids], dim=1)
                out = model(idx, attention_mask=attn_mask, logits_to_keep=1)
    finally:
        model.train(was_training)

    samples = [
        Sample(
            text=texts[r] if texts[r] is not None else (decode(completions[r]) if decode else ""),
            token_ids=completions[r],
            prompt_tokens=len(rows[r]),
            completion_tokens=len(completions[r]),
            finish_reason=reasons[r] or "length",
        )
        for r in range(len(rows))
    ]
    return [samples[i * config.n:(i + 1) * config.n] for i in range(len(prompts))]


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
