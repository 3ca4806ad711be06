"""Conversation history behind the old handler's ``session_id``, shared by every server worker.

``mlflow models serve -w N`` runs N uvicorn worker processes, and consecutive requests of one conversation land
on any of them, so history cannot live in process memory. It lives in one sqlite file in a configurable
directory instead:

- WAL journal: readers never block the single writer, so history lookups of one worker do not wait for another
  worker's append.
- A busy timeout: a worker that finds the write lock held waits for it instead of failing the request.
- ``BEGIN IMMEDIATE`` for every write: the write lock is taken up front, so two workers appending to the same
  session cannot deadlock upgrading read locks.
- One connection per operation: nothing to share across threads (MLflow runs ``predict`` in a thread pool) or
  to inherit across process boundaries.

Each session is bounded in turns and in tokens (oldest turns dropped first) and turns older than a time to live
are deleted, so the file cannot grow without limit. A ``session_id`` is only ever a database key, checked
against :data:`SESSION_ID_PATTERN`; it never becomes part of a path.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SESSION_ID_PATTERN", "SessionStore", "Turn"]

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

_DB_FILE = "neuroq_sessions.sqlite3"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        user_text TEXT NOT NULL,
        assistant_text TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, id)",
    "CREATE INDEX IF NOT EXISTS turns_by_age ON turns (created_at)",
)

# Newest turns first: a turn survives while it is among the newest `max_turns` and the running token total
# (itself included) stays within `max_tokens`.
_TRIM = """
DELETE FROM turns WHERE id IN (
    SELECT id FROM (
        SELECT id,
               ROW_NUMBER() OVER (ORDER BY id DESC) AS rank,
               SUM(tokens) OVER (ORDER BY id DESC) AS running_tokens
        FROM turns WHERE session_id = ?
    ) WHERE rank > ? OR running_tokens > ?
)
"""


@dataclass(frozen=True)
class Turn:
    """One exchange: what the user said, what the model answered, and its length in tokens."""

    user: str
    assistant: str
    tokens: int


class SessionStore:
    """Bounded conversation histories in ``directory/neuroq_sessions.sqlite3``, safe across processes."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_turns: int = 8,
        max_tokens: int = 512,
        ttl_seconds: float = 7 * 24 * 3600,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if max_turns < 1 or max_tokens < 1 or ttl_seconds <= 0 or busy_timeout_s <= 0:
            raise ValueError(
                "SessionStore bounds must be positive: "
                f"max_turns={max_turns}, max_tokens={max_tokens}, ttl_seconds={ttl_seconds}, "
                f"busy_timeout_s={busy_timeout_s}"
            )
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.ttl_seconds = ttl_seconds
        self.busy_timeout_s = busy_timeout_s
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _DB_FILE
        with self._connect() as db:
            # journal_mode is a property of the file: set once here, every later connection inherits it.
            db.execute("PRAGMA journal_mode=WAL")
            with _immediate(db):
                for statement in _SCHEMA:
                    db.execute(statement)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never opened implicitly by sqlite3.
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            # Losing the last turns on power loss is acceptable for chat history; an fsync per request is not.
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def history(self, session_id: str) -> list[Turn]:
        """The session's turns, oldest first; empty for an unknown or expired session."""
        _check_id(session_id)
        cutoff = time.time() - self.ttl_seconds
        with self._connect() as db:
            rows = db.execute(
                "SELECT user_text, assistant_text, tokens FROM turns "
                "WHERE session_id = ? AND created_at >= ? ORDER BY id",
                (session_id, cutoff),
            ).fetchall()
        return [Turn(*row) for row in rows]

    def append(self, session_id: str, user: str, assistant: str, tokens: int) -> None:
        """Record one exchange, then drop the session's oldest turns beyond the bounds and all expired turns.

        An exchange longer than ``max_tokens`` on its own is dropped too, so the bound holds for every session.
        """
        _check_id(session_id)
        now = time.time()
        with self._connect() as db, _immediate(db):
            db.execute(
                "INSERT INTO turns (session_id, user_text, assistant_text, tokens, created_at) VALUES (?, ?, ?, ?, ?)",
                (session_id, user, assistant, int(tokens), now),
            )
            db.execute(_TRIM, (session_id, self.max_turns, self.max_tokens))
            db.execute("DELETE FROM turns WHERE created_at < ?", (now - self.ttl_seconds,))

    def clear(self, session_id: str) -> int:
        """Forget the session; returns how many turns were deleted."""
        _check_id(session_id)
        with self._connect() as db, _immediate(db):
            return db.execute("DELETE FROM turns WHERE session_id = ?", (session_id,)).rowcount


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check_id(session_id: str) -> None:
    if not isinstance(session_id, str) or not SESSION_ID_PATTERN.fullmatch(session_id):
        raise ValueError(f"session_id must match {SESSION_ID_PATTERN.pattern}")
