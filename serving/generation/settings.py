"""Generation's own settings, read when the model loads.

Besides base/settings.py's NEUROQ_SERVING_MAX_CHARS (per prompt or chat), MAX_ITEMS (chat messages),
BATCH_SIZE (sequences per merged generate call), BATCH_WAIT_MS and DEVICE:

  NEUROQ_SERVING_MAX_PROMPTS          [16]       sequences per request: prompts x n (or batch rows)
  NEUROQ_SERVING_MAX_NEW_TOKENS       [256]      largest max_tokens / max_length (also always < the context)
  NEUROQ_SERVING_SESSION_DIR          [$TMPDIR/neuroq-sessions]  directory of the session database; every worker
                                                 of a server must see the same one (one host: sqlite)
  NEUROQ_SERVING_SESSION_MAX_TURNS    [8]        turns kept per session (oldest dropped first)
  NEUROQ_SERVING_SESSION_MAX_TOKENS   [512]      tokens of history kept per session
  NEUROQ_SERVING_SESSION_TTL_S        [604800]   turns older than this are deleted
  NEUROQ_SERVING_MODEL_URI            [unset]    the URI being served, e.g. models:/neuroq@champion: ``status``
                                                 reports its name, alias and version (an alias is resolved to
                                                 its version through the registry once, at load). Unset:
                                                 the name recorded at logging time, version and alias null.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.base.settings import EnvSettings, setting

__all__ = ["GenerationSettings"]


@dataclass(frozen=True)
class GenerationSettings(EnvSettings):
    max_prompts: int = setting("MAX_PROMPTS", 16, minimum=1)
    max_new_tokens: int = setting("MAX_NEW_TOKENS", 256, minimum=1)
    session_dir: Path = setting("SESSION_DIR",
                                default_factory=lambda: Path(tempfile.gettempdir()) / "neuroq-sessions")
    session_max_turns: int = setting("SESSION_MAX_TURNS", 8, minimum=1)
    session_max_tokens: int = setting("SESSION_MAX_TOKENS", 512, minimum=1)
    session_ttl_s: float = setting("SESSION_TTL_S", 7 * 24 * 3600, minimum=1.0)
    model_uri: str | None = setting("MODEL_URI", None)
