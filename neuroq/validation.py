"""How every config in the project checks its fields: ``require(ok, field, expected, value)``.

    require(is_int(self.batch_size) and self.batch_size >= 1, "TrainConfig.batch_size", "an integer >= 1",
            self.batch_size)
    # ConfigError: TrainConfig.batch_size must be an integer >= 1, got 0

One sentence shape for every bad value, so a message always names the field, the rule and what was given, and the
CLI can rewrite the field as its flag. Library configs qualify the field with their class; configs whose field
names are also request or flag names (GenerationConfig, NeuroQConfig, the pipeline parameters) give the bare name.
"""

from __future__ import annotations

import math

from neuroq.errors import ConfigError

__all__ = ["is_int", "is_number", "require"]


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``: ``True`` would otherwise pass as 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, field: str, expected: str, value: object) -> None:
    """Raise ``ConfigError("{field} must be {expected}, got {value!r}")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{field} must be {expected}, got {value!r}")
