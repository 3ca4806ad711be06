"""Serving settings from `NEUROQ_SERVING_*` environment variables, read when a model loads.

A settings class is a frozen dataclass deriving from `EnvSettings` whose fields are declared with `setting`:
the variable's name, the default and the lower bound are written once, beside the field, and `from_env` reads
every such field the same way (unset or blank: the default; a number below its bound or not a number: a
ValueError naming the variable). The shared limits and batching knobs (defaults in brackets):

  NEUROQ_SERVING_MAX_ITEMS         [2048]    texts (embeddings) or documents (rerank) per request
  NEUROQ_SERVING_MAX_CHARS         [50000]   characters per text, query or document
  NEUROQ_SERVING_MAX_TOTAL_TOKENS  [300000]  tokens per request after truncation (what the model runs)
  NEUROQ_SERVING_MAX_DEPTH         [32]      nesting levels of a JSON body (scoring_guard.py)
  NEUROQ_SERVING_BATCH_SIZE        [32]      sequences per forward pass
  NEUROQ_SERVING_BATCH_TOKENS      [16384]   padded tokens (sequences x longest) per forward pass
  NEUROQ_SERVING_BATCH_WAIT_MS     [5]       how long the batcher waits for requests that are being parsed
  NEUROQ_SERVING_BATCH_IDLE_MS     [200]     how long a model thread waits for work before it ends (CPU only)
  NEUROQ_SERVING_DEVICE            [cuda if available, else cpu]

Generation adds its own (generation/settings.py).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass

__all__ = ["ENV_PREFIX", "BatchConfig", "EnvSettings", "Limits", "pick_device", "setting"]

ENV_PREFIX = "NEUROQ_SERVING_"
_VARIABLE, _MINIMUM = "env_variable", "env_minimum"


def setting(variable: str, default=dataclasses.MISSING, *, minimum=None, default_factory=dataclasses.MISSING):
    """A dataclass field read from `NEUROQ_SERVING_<variable>`; a number must be at least `minimum`."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_VARIABLE: variable, _MINIMUM: minimum})


class EnvSettings:
    """Mixin of the settings dataclasses: `from_env` builds one from the environment."""

    @classmethod
    def from_env(cls):
        types = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            variable = field.metadata.get(_VARIABLE)
            if variable is None:
                continue
            raw = os.environ.get(ENV_PREFIX + variable)
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(variable, raw, types[field.name], field.metadata[_MINIMUM])
        return cls(**values)


def _parse(variable: str, raw: str, annotation, minimum):
    # `str | None` and the like: the value's own type is the one that is not None.
    cast = next((t for t in typing.get_args(annotation) if t is not type(None)), annotation)
    if cast not in (int, float):
        return cast(raw)
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{variable}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{ENV_PREFIX}{variable}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Limits(EnvSettings):
    max_items: int = setting("MAX_ITEMS", 2048, minimum=1)
    max_chars: int = setting("MAX_CHARS", 50_000, minimum=1)
    max_total_tokens: int = setting("MAX_TOTAL_TOKENS", 300_000, minimum=1)
    # Far above any request shape served here (4 levels), far below Python's recursion limit, which the
    # numpy conversion, the echo in MLflow's error message and our own walks all recurse against.
    max_depth: int = setting("MAX_DEPTH", 32, minimum=1)


@dataclass(frozen=True)
class BatchConfig(EnvSettings):
    batch_size: int = setting("BATCH_SIZE", 32, minimum=1)
    batch_tokens: int = setting("BATCH_TOKENS", 16_384, minimum=1)
    wait_ms: float = setting("BATCH_WAIT_MS", 5.0, minimum=0.0)
    # How long a model thread waits for work before it ends, handing back its OpenMP threads (batcher.py): long
    # enough that a steady client keeps it, short enough that a model called now and then does not keep another
    # model's waits from spinning. None: never (a model on a GPU, see model.py).
    idle_ms: float | None = setting("BATCH_IDLE_MS", 200.0, minimum=0.0)


def pick_device() -> str:
    import torch

    return os.environ.get(ENV_PREFIX + "DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
