"""The sampling fields every generating request shares (completions, chat, batch rows, the old handler's
generate), parsed into one ``neuroq.generate.GenerationConfig``.

Fields (unset ones keep GenerationConfig's defaults): max_tokens (the old handler's max_length), temperature
(0 = greedy), top_p in (0, 1], top_k (0 = off), repetition_penalty, no_repeat_ngram_size (0 = off), temp_min /
temp_max (a temperature schedule, see GenerationConfig), stop (a string or up to 4), seed (same request and seed,
same answer), and ``truncate``: a prompt longer than the model's context minus max_tokens loses its beginning by
default; with ``"truncate": false`` it is a 400 instead.
"""

from __future__ import annotations

from typing import Any

from neuroq.errors import ConfigError
from neuroq.generate import GenerationConfig
from serving.base.request import RequestError, optional_bool, optional_int, optional_number

__all__ = ["MAX_TEMPERATURE", "SAMPLING_FIELDS", "parse_sampling"]

SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "temp_min", "temp_max",
    "seed", "stop", "truncate",
)
_MAX_STOP = 4  # OpenAI's limit
_MAX_STOP_CHARS = 100
# Finite bounds: JSON as Python parses it admits Infinity, and nothing useful lies beyond these.
MAX_TEMPERATURE = 100.0
_MAX_REPETITION_PENALTY = 100.0


def parse_sampling(body: dict, max_field: str, *, max_new_tokens: int, n: int = 1) -> GenerationConfig:
    """The sampling fields of ``body``; ``max_field`` (max_tokens or max_length) may ask for up to
    ``max_new_tokens`` new tokens."""
    knobs: dict[str, Any] = {"n": n}
    max_new = optional_int(body, max_field, minimum=1, maximum=max_new_tokens)
    # The library default may not fit a small model's context; a request that names no length still works.
    knobs["max_new_tokens"] = max_new if max_new is not None else min(GenerationConfig().max_new_tokens,
                                                                      max_new_tokens)
    for name, low, high, exclusive in (("temperature", 0, MAX_TEMPERATURE, False),
                                       ("temp_min", 0, MAX_TEMPERATURE, False),
                                       ("temp_max", 0, MAX_TEMPERATURE, False), ("top_p", 0, 1, True),
                                       ("repetition_penalty", 0, _MAX_REPETITION_PENALTY, True)):
        value = optional_number(body, name, minimum=low, maximum=high, exclusive_minimum=exclusive)
        if value is not None:
            knobs[name] = value
    for name in ("top_k", "no_repeat_ngram_size"):
        value = optional_int(body, name, minimum=0, maximum=1_000_000)
        if value is not None:
            knobs[name] = value
    seed = optional_int(body, "seed", minimum=0, maximum=2**63 - 1)
    if seed is not None:
        knobs["seed"] = seed
    knobs["stop"] = _stop_strings(body)
    knobs["truncation"] = "error" if optional_bool(body, "truncate") is False else "left"
    try:
        return GenerationConfig(**knobs)
    except ConfigError as exc:  # cross-field rules, e.g. temp_min > temp_max; the message names the fields
        raise RequestError(str(exc).split(" ", 1)[0], str(exc)) from None


def _stop_strings(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > _MAX_STOP:
        raise RequestError("stop", f"must be a string or a list of at most {_MAX_STOP} strings")
    for i, stop in enumerate(value):
        # Unlike prompts, whitespace is a meaningful stop string ("\n" is the usual one).
        if not isinstance(stop, str) or not 0 < len(stop) <= _MAX_STOP_CHARS:
            raise RequestError(f"stop[{i}]", f"must be a non-empty string of at most {_MAX_STOP_CHARS} characters")
    return tuple(value)
