"""Request machinery shared by the serving pyfuncs (NeuroQ generation, Ruri embeddings and rerank).

Every model follows one path: `parse` (body -> typed request, field by field) -> `prepare` (request ->
tokenised work items, with the token limits) -> the cross-request `MicroBatcher` (length-sorted batches
on one model thread) -> `respond` (outputs -> the public response shape). `ServingModel` fixes that
order; subclasses fill in the four steps.

How bodies reach `predict` under `mlflow models serve` (mlflow/pyfunc/scoring_server, models logged
without a signature):
  * a top-level `input` (or `messages`, `prompt`) key: the JSON object as is; the answer goes back unwrapped;
  * `{"inputs": {...}}`: the inner object with every value run through `np.array` (lists become arrays,
    scalars 0-d arrays); the answer goes back as `{"predictions": ...}`. `plain()` undoes the numpy step.

Errors: `RequestError` is an `MlflowException` with INVALID_PARAMETER_VALUE, so the server answers 400
with our message, which always starts with the offending field. The server prefixes the message with
the whole request (`Failed to predict data '<request>'`), so under the server the request object is
shortened in place before a `RequestError` leaves `predict`, and sizes are checked before anything
expensive (or anything that could raise on a huge value) runs.

Limits and batching read these environment variables when a model is loaded (defaults in brackets):
  NEUROQ_SERVING_MAX_ITEMS         [2048]    texts (embeddings) or documents (rerank) per request
  NEUROQ_SERVING_MAX_CHARS         [50000]   characters per text, query or document
  NEUROQ_SERVING_MAX_TOTAL_TOKENS  [300000]  tokens per request after truncation (what the model runs)
  NEUROQ_SERVING_MAX_DEPTH         [32]      nesting levels of a JSON body (scoring_guard.py)
  NEUROQ_SERVING_BATCH_SIZE        [32]      sequences per forward pass
  NEUROQ_SERVING_BATCH_TOKENS      [16384]   padded tokens (sequences x longest) per forward pass
  NEUROQ_SERVING_BATCH_WAIT_MS     [5]       how long the batcher waits for requests that are being parsed
  NEUROQ_SERVING_DEVICE            [cuda if available, else cpu]
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from serving.integrity import verify_logged_model

ENV_PREFIX = "NEUROQ_SERVING_"
# Set by mlflow's scoring server (mlflow.environment_variables._MLFLOW_IS_IN_SERVING_ENVIRONMENT).
SERVING_ENV_FLAG = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


class RequestError(MlflowException):
    """A request the model cannot serve; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}", error_code=INVALID_PARAMETER_VALUE)


# --------------------------------------------------------------------------------------------
# limits and batching knobs, from the environment


def env_number(name: str, default, cast, minimum):
    """`NEUROQ_SERVING_<name>` cast and bounded below, or `default` when unset: every served model's limits."""
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Limits:
    max_items: int = 2048
    max_chars: int = 50_000
    max_total_tokens: int = 300_000
    # Far above any request shape served here (4 levels), far below Python's recursion limit, which the
    # numpy conversion, the echo in MLflow's error message and our own walks all recurse against.
    max_depth: int = 32

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_items=env_number("MAX_ITEMS", cls.max_items, int, 1),
            max_chars=env_number("MAX_CHARS", cls.max_chars, int, 1),
            max_total_tokens=env_number("MAX_TOTAL_TOKENS", cls.max_total_tokens, int, 1),
            max_depth=env_number("MAX_DEPTH", cls.max_depth, int, 1),
        )


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = 32
    batch_tokens: int = 16_384
    wait_ms: float = 5.0

    @classmethod
    def from_env(cls) -> BatchConfig:
        return cls(
            batch_size=env_number("BATCH_SIZE", cls.batch_size, int, 1),
            batch_tokens=env_number("BATCH_TOKENS", cls.batch_tokens, int, 1),
            wait_ms=env_number("BATCH_WAIT_MS", cls.wait_ms, float, 0.0),
        )


# --------------------------------------------------------------------------------------------
# body normalisation and field validators


def plain(value):
    """Undo the `inputs` envelope's numpy conversion (arrays -> lists, numpy scalars -> Python)."""
    if isinstance(value, np.ndarray):
        return plain(value.item()) if value.ndim == 0 else [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def expect_object(value, field: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(field, f"must be a JSON object, got {_type_name(value)}")
    return value


def reject_unknown(body: dict, allowed: Iterable[str], where: str = "request", *, path: str = "") -> None:
    """Refuse the first field not in `allowed`; `path` is the object's own path (`messages[2]`) when nested."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        name = clip_name(unknown[0])
        raise RequestError(f"{path}.{name}" if path else name,
                           f"unknown field in {where} (accepted: {', '.join(sorted(allowed))})")


def clip_name(name, limit: int = 100) -> str:
    """A client's field name as an error names it: a key can be megabytes long, and errors echo their field."""
    name = str(name)
    return name if len(name) <= limit else f"{name[:limit]}..."


def text(value, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, got {_type_name(value)}")
    if len(value) > limits.max_chars:
        raise RequestError(field, f"is {len(value)} characters; the limit is {limits.max_chars}")
    if not value.strip():
        raise RequestError(field, "must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON's "\ud800" escapes decode to lone surrogates; tokenizers refuse them
        raise RequestError(field, f"is not valid Unicode: a lone surrogate {value[error.start]!r} at character "
                                  f"{error.start}") from None
    return value


def text_list(value, field: str, limits: Limits, *, allow_single: bool) -> list[str]:
    """A list of texts (or one text where `allow_single`); the count is checked before any element."""
    if allow_single and isinstance(value, str):
        return [text(value, field, limits)]
    if not isinstance(value, list):
        expected = "a string or a list of strings" if allow_single else "a list"
        raise RequestError(field, f"must be {expected}, got {_type_name(value)}")
    check_count(value, field, limits)
    return [text(v, f"{field}[{i}]", limits) for i, v in enumerate(value)]


def check_count(items: Sequence, field: str, limits: Limits) -> None:
    if not items:
        raise RequestError(field, "must not be empty")
    if len(items) > limits.max_items:
        raise RequestError(field, f"has {len(items)} items; the limit is {limits.max_items}")


def optional_int(body: dict, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    # bool is an int in Python but never what a client means by a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"must be an integer, got {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise RequestError(field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise RequestError(field, f"must be at most {maximum}, got {value}")
    return value


def optional_bool(body: dict, field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise RequestError(field, f"must be true or false, got {_type_name(value)}")
    return value


def optional_str(body: dict, field: str, limits: Limits) -> str | None:
    value = body.get(field)
    return None if value is None else text(value, field, limits)


def optional_choice(body: dict, field: str, choices: Iterable[str]) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        raise RequestError(field, f"must be one of {', '.join(map(repr, choices))}, got {_short(value)}")
    return value


def check_total_tokens(n_tokens: int, field: str, limits: Limits) -> None:
    if n_tokens > limits.max_total_tokens:
        raise RequestError(
            field, f"amounts to {n_tokens} tokens after truncation; the limit is {limits.max_total_tokens}"
        )


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _short(value, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def shorten_in_place(body, max_chars: int = 100, max_items: int = 4) -> None:
    """Replace long strings and lists inside `body` with summaries, so the server's error message,
    which embeds the request, stays small.

    `body` is what `predict` received: a dict (whose values the `inputs` envelope made numpy arrays), for
    `{"inputs": [...]}` a numpy array itself, or a DataFrame (`dataframe_split` / `dataframe_records`). An
    array cannot shrink in place: its first `max_items` strings are shortened and the others blanked to "..."
    (numpy prints at most 1000 items anyway). A DataFrame prints clipped cells and at most 60 rows, but its
    column names whole: those are clipped."""
    if isinstance(body, dict):
        for key in list(body):
            value = _shortened(body.pop(key), max_chars, max_items)
            body[clip_name(key, max_chars) if isinstance(key, str) else key] = value
    elif isinstance(body, np.ndarray) and body.dtype.kind in "OU":
        for position, index in enumerate(np.ndindex(body.shape)):
            if position >= max_items:
                body[index] = "..."
            elif isinstance(body[index], str | dict | list):
                body[index] = _shortened(body[index], max_chars, max_items)
    elif isinstance(body, pd.DataFrame):
        body.columns = [clip_name(c, max_chars) if isinstance(c, str) else c for c in body.columns]


def _shortened(value, max_chars: int, max_items: int):
    if isinstance(value, np.ndarray):
        value = plain(value)
    if isinstance(value, dict):
        shorten_in_place(value, max_chars, max_items)
    elif isinstance(value, str) and len(value) > max_chars:
        value = f"{value[:max_chars]}... ({len(value)} characters)"
    elif isinstance(value, list) and len(value) > max_items:
        value = f"<{len(value)} items>"
    elif isinstance(value, list):
        value = [_shortened(v, max_chars, max_items) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# cross-request micro-batching


class _Job:
    __slots__ = ("items", "results", "error", "done")

    def __init__(self, items: list):
        self.items = items
        self.results: list = [None] * len(items)
        self.error: BaseException | None = None
        self.done = threading.Event()


class MicroBatcher:
    """Runs the work items of concurrent requests together, on one thread that owns the model.

    The scoring server calls `predict` from a thread pool (asyncio.to_thread), one call per request.
    Each call reserves a ticket as soon as it starts (`reserve()`), parses and tokenises in its own
    thread, then hands its items to `Ticket.run` and blocks. The model thread takes the first queued
    request and keeps gathering queued ones until `batch_size` items are collected; while other
    requests hold tickets but are still being parsed it waits for them, up to `wait_ms`. With a single
    client nobody else holds a ticket, so nothing waits. All gathered items are sorted by length and
    cut into batches of at most `batch_size` sequences and `batch_tokens` padded tokens, which keeps
    padding low; results go back to each request in its own order. Only this thread touches the
    model, so the model needs no lock.
    """

    def __init__(self, run_batch: Callable[[list], Sequence], config: BatchConfig, name: str = "serving-batcher"):
        self._run_batch = run_batch
        self._config = config
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._arriving = 0
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # forward passes so far (diagnostics, tests)
        self.requests_run = 0  # requests whose items went through this thread

    @contextmanager
    def reserve(self):
        with self._cond:
            self._arriving += 1
        ticket = _Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.used:
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify_all()

    def _submit(self, items: list) -> list:
        job = _Job(items)
        with self._cond:
            self._arriving -= 1
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.results

    def _gather(self) -> list[_Job]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            jobs = [self._queue.popleft()]
            n_items = len(jobs[0].items)
            deadline = time.monotonic() + self._config.wait_ms / 1000
            while n_items < self._config.batch_size:
                if self._queue:
                    jobs.append(self._queue.popleft())
                    n_items += len(jobs[-1].items)
                    continue
                remaining = deadline - time.monotonic()
                if self._arriving == 0 or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            try:
                for batch in self._plan(jobs):
                    outputs = self._run_batch([jobs[j].items[i] for j, i in batch])
                    self.batches_run += 1
                    for (j, i), output in zip(batch, outputs, strict=True):
                        jobs[j].results[i] = output
            except BaseException as error:  # the waiting requests get it; the thread must survive
                for job in jobs:
                    job.error = error
            self.requests_run += len(jobs)
            for job in jobs:
                job.done.set()

    def _plan(self, jobs: list[_Job]) -> list[list[tuple[int, int]]]:
        keys = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.items))]
        keys.sort(key=lambda k: len(jobs[k[0]].items[k[1]]), reverse=True)
        batches, current, longest = [], [], 0
        for key in keys:
            length = len(jobs[key[0]].items[key[1]])
            longest = max(longest, length)
            full = len(current) >= self._config.batch_size
            over_budget = (len(current) + 1) * longest > self._config.batch_tokens
            if current and (full or over_budget):
                batches.append(current)
                current, longest = [], length
            current.append(key)
        if current:
            batches.append(current)
        return batches


class _Ticket:
    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher
        self.used = False

    def run(self, items: list) -> list:
        self.used = True
        return self._batcher._submit(items)


# --------------------------------------------------------------------------------------------
# the pyfunc template


class ServingModel(mlflow.pyfunc.PythonModel):
    """parse -> prepare -> batch -> respond; subclasses implement the four steps and `load`.

    Loading first checks the artifact files against the digests recorded at logging time (integrity.py), so
    a damaged model never starts, and inside `mlflow models serve` makes the server's own body parsing answer
    malformed bodies with 4xx (scoring_guard.py)."""

    def load_context(self, context) -> None:
        from serving import scoring_guard  # it imports RequestError from this module

        verify_logged_model(context)
        self.limits = Limits.from_env()
        self.batcher = MicroBatcher(self.run_batch, BatchConfig.from_env(), name=type(self).__name__)
        self.load(context)
        scoring_guard.install(self.limits)

    # No type hints on predict: mlflow would turn them into a signature and then reject the raw
    # OpenAI / Cohere bodies (see the module docstring).
    def predict(self, context, model_input, params=None):
        with self.batcher.reserve() as ticket:
            try:
                request = self.parse(plain(model_input))
                items = self.prepare(request)
            except RequestError:
                if os.environ.get(SERVING_ENV_FLAG, "").lower() == "true":
                    shorten_in_place(model_input)
                raise
            # Requests that run nothing on the model (generation's health, status) do not queue behind those that do.
            outputs = ticket.run(items) if items else []
        return self.respond(request, items, outputs)

    def load(self, context) -> None:
        raise NotImplementedError

    def parse(self, body) -> Any:
        raise NotImplementedError

    def prepare(self, request) -> list:
        raise NotImplementedError

    def run_batch(self, items: list) -> Sequence:
        raise NotImplementedError

    def respond(self, request, items: list, outputs: list) -> dict:
        raise NotImplementedError

