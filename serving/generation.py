"""NeuroQ text generation as an MLflow pyfunc: OpenAI completions and chat, the old handler's actions, batches.

Serve the registered champion (the model's code travels inside it, see "Logging" below):

    export MLFLOW_TRACKING_URI=...  NEUROQ_SERVING_MODEL_URI=models:/neuroq@champion
    mlflow models serve -m "$NEUROQ_SERVING_MODEL_URI" --env-manager local -w 4

Request shapes at ``POST /invocations`` (JSON). The model is logged without a signature, so MLflow hands a body
with a top-level ``prompt``, ``messages`` or ``input`` key to ``predict`` untouched and returns the answer as is;
the batch-scoring envelopes (``inputs``, ``dataframe_split``, ``dataframe_records``) arrive parsed and the answer
is wrapped in ``{"predictions": ...}``.

  {"prompt": str | [str], ...}      OpenAI completion, raw text in -> {"id", "object": "text_completion",
                                    "created", "model", "choices": [{"index", "text", "finish_reason",
                                    "logprobs": null}], "usage": {"prompt_tokens", "completion_tokens",
                                    "total_tokens"}}; with n > 1, choice i * n + j is sample j of prompt i
  {"messages": [{"role", "content"}], ...}
                                    OpenAI chat -> the same with "object": "chat.completion" and
                                    choices[].message = {"role": "assistant", "content"}. Turns become
                                    "<USER>…<ASSISTANT>…" (NeuroQTokenizer.format_chat), system text is a prefix of
                                    the first user turn, and the last message must be the user's.
  {"input": {"action": ...}}        the old handler (../shared/seeds/000, 001):
      health                        -> {"status": "healthy", "model_loaded": true}
      status                        -> {"status": "ready", "model_name", "model_version", "model_alias",
                                        "model_uri", "device", "mode", "vocab_size", "max_seq_len",
                                        "parameters", "worker_pid"}
      generate                      prompt, max_length, temperature, temp_min, temp_max, top_k, top_p,
                                    repetition_penalty, no_repeat_ngram_size, seed, stop, session_id, mode,
                                    truncate -> {"status": "success", "prompt", "generated", "session_id",
                                    "finish_reason", "history_turns", "worker_pid"}. The prompt is a user turn
                                    ("<USER>{prompt}<ASSISTANT>") after the session's history; as in the old
                                    handler, without temp_min/temp_max the temperature runs from 1.2x to 0.8x
                                    ``temperature``. ``mode`` must name the served model's mode.
      clear_session                 session_id -> {"status": "success", "session_id", "cleared_turns"}
      train, init, train_before_generate: true (or any training field)
                                    -> 400: training runs in the pipeline, not in a serving request
  {"inputs": [str, ...]}, or dataframe_split / dataframe_records with a "prompt" column
                                    batch scoring -> {"predictions": [generated text, ...]} in row order.
                                    Other columns must be sampling fields of the completions request, with
                                    one value for every row. ``{"inputs": {...}}`` around any body above is
                                    answered like that body, inside "predictions".

Sampling fields of completions and chat (defaults: ``neuroq.generate.GenerationConfig``): max_tokens (the old
handler's max_length), temperature (0 = greedy), top_p in (0, 1], top_k (0 = off), repetition_penalty,
no_repeat_ngram_size (0 = off), temp_min / temp_max (a temperature schedule, see GenerationConfig), n, stop
(a string or up to 4), seed (same request and seed, same answer), and ``truncate``: a prompt longer than the
model's context minus max_tokens loses its beginning by default; with ``"truncate": false`` it is a 400 instead.
``model``, ``user`` and ``stream: false`` are accepted for client compatibility. Every bad value is an HTTP 400
whose message starts with the field's path (``messages[2].content: ...``); sizes are checked before any text is
tokenised (protocol.py explains why that matters under ``mlflow models serve``).

A request's prompts (times n) are generated in one batched call (left-padded, KV cache). The cross-request
batcher of protocol.py also merges concurrent requests whose sampling settings are equal into that call (how
many is bounded by the scoring server, which runs at most min(32, CPUs + 4) requests at once per worker); a
request with a seed always runs on its own, since sampled tokens depend on the batch they are drawn in.
``health``, ``status`` and ``clear_session`` generate nothing and never wait behind requests that do.

Environment variables, read when the model loads (plus protocol.py's NEUROQ_SERVING_MAX_CHARS per prompt or
chat, MAX_ITEMS chat messages, BATCH_SIZE sequences per merged call, BATCH_WAIT_MS, and DEVICE):

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

Logging (``log_neuroq_model``). The checkpoint's three files are the artifacts ``weights``, ``config`` and
``tokenizer``; their sha256 and sizes go into the MLmodel metadata (``metadata.integrity``, see integrity.py), and
``load_context`` refuses to serve when a file is a Git LFS pointer, not of the logged size, or has another digest.
The model is logged as code (MLflow's models-from-code: a three-line script that imports this class), not as a
cloudpickle, and the ``neuroq`` and ``serving`` packages go in as ``code_paths`` (``integrity.stage_code``): the
registered model carries the code it was logged with, so ``mlflow models serve --env-manager local`` needs only
the pinned requirements (mlflow, torch, sentencepiece, safetensors, numpy, pandas) installed, not this project.
torch is pinned without its local label (+cpu), so a GPU host installs its own build.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from neuroq.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_checkpoint
from neuroq.errors import CheckpointError, ConfigError
from neuroq.generate import GenerationConfig, Sample, generate_ids
from neuroq.tokenizer import NeuroQTokenizer
from serving.encoder import pick_device
from serving.integrity import integrity_metadata, logged_model_dir, stage_code
from serving.protocol import (
    BatchConfig,
    Limits,
    RequestError,
    ServingModel,
    check_count,
    env_number,
    expect_object,
    optional_bool,
    optional_choice,
    optional_int,
    optional_str,
    plain,
    reject_unknown,
    text,
)
from serving.sessions import SESSION_ID_PATTERN, SessionStore

__all__ = ["ARTIFACT_FILES", "GenerationSettings", "NeuroQGenerationModel", "log_neuroq_model"]

logger = logging.getLogger(__name__)

# pyfunc artifact name -> checkpoint file; all three land side by side in the model's artifacts/ folder, which
# is therefore a checkpoint directory load_checkpoint reads as is.
ARTIFACT_FILES = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE, "tokenizer": TOKENIZER_FILE}

_MODEL_CODE = '''\
"""MLflow models-from-code entry point of the NeuroQ generation pyfunc (written by log_neuroq_model)."""
import mlflow

from serving.generation import NeuroQGenerationModel

mlflow.models.set_model(NeuroQGenerationModel())
'''

_REQUIREMENTS = ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas", "tqdm")

_MAX_STOP = 4  # OpenAI's limit
_MAX_STOP_CHARS = 100
# Finite bounds: JSON as Python parses it admits Infinity, and nothing useful lies beyond these.
_MAX_TEMPERATURE = 100.0
_MAX_REPETITION_PENALTY = 100.0
_LEGACY_TEMPERATURE_SPAN = (0.8, 1.2)  # the old handler's temperature -> (temp_min, temp_max) factors

_SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "temp_min", "temp_max",
    "seed", "stop", "truncate",
)
_COMPLETION_FIELDS = ("prompt", "max_tokens", "n", "model", "user", "stream", *_SAMPLING_FIELDS)
_CHAT_FIELDS = ("messages", "max_tokens", "n", "model", "user", "stream", *_SAMPLING_FIELDS)
_BATCH_FIELDS = ("prompt", "max_tokens", *_SAMPLING_FIELDS)
_LEGACY_GENERATE_FIELDS = ("action", "prompt", "max_length", "session_id", "mode", "train_before_generate",
                           *_SAMPLING_FIELDS)
_MESSAGE_FIELDS = ("role", "content", "name")
_ACTIONS = ("health", "status", "generate", "clear_session")
_TRAINING_ACTIONS = ("train", "init")
# What the old handler's train / init / train_before_generate requests carried (../shared/seeds/000, 001).
_TRAINING_FIELDS = ("data_sources", "common_crawl_config", "epochs", "batch_size", "learning_rate", "lr",
                    "seq_length", "texts", "checkpoint_path", "embed_dim", "hidden_dim", "num_heads",
                    "num_layers", "num_neurons")
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class GenerationSettings:
    """The generation-specific limits and session bounds (see the module docstring for the variables)."""

    max_prompts: int = 16
    max_new_tokens: int = 256
    session_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "neuroq-sessions")
    session_max_turns: int = 8
    session_max_tokens: int = 512
    session_ttl_s: float = 7 * 24 * 3600
    model_uri: str | None = None

    @classmethod
    def from_env(cls) -> GenerationSettings:
        defaults = cls()
        return cls(
            max_prompts=env_number("MAX_PROMPTS", defaults.max_prompts, int, 1),
            max_new_tokens=env_number("MAX_NEW_TOKENS", defaults.max_new_tokens, int, 1),
            session_dir=Path(os.environ.get("NEUROQ_SERVING_SESSION_DIR") or defaults.session_dir),
            session_max_turns=env_number("SESSION_MAX_TURNS", defaults.session_max_turns, int, 1),
            session_max_tokens=env_number("SESSION_MAX_TOKENS", defaults.session_max_tokens, int, 1),
            session_ttl_s=env_number("SESSION_TTL_S", defaults.session_ttl_s, float, 1.0),
            model_uri=os.environ.get("NEUROQ_SERVING_MODEL_URI") or None,
        )


@dataclass(frozen=True)
class ServedModel:
    """Which registered model this server answers for, as ``status`` reports it."""

    name: str
    version: str | None
    alias: str | None
    uri: str | None


def resolve_served_model(model_uri: str | None, logged_name: str | None) -> ServedModel:
    """Name, version and alias from ``model_uri``; an alias is looked up in the registry (once, at load)."""
    name = logged_name or "neuroq"
    if not model_uri:
        return ServedModel(name, None, None, None)
    match = _MODEL_URI.fullmatch(model_uri)
    if match is None:
        logger.warning("NEUROQ_SERVING_MODEL_URI=%s is not models:/NAME@ALIAS or models:/NAME/VERSION", model_uri)
        return ServedModel(name, None, None, model_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is not None:
        try:
            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        except Exception as exc:  # the registry may be unreachable; serving must still start
            logger.warning("could not resolve %s to a version: %s", model_uri, exc)
    return ServedModel(name, version, alias, model_uri)


# ------------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class TextRequest:
    """Completions, chat and batch scoring: prompts ready for the model, and how to answer."""

    kind: str  # "completion" | "chat" | "batch"
    prompts: list[str]
    field: str  # where the prompts came from, for errors about their length
    config: GenerationConfig


@dataclass(frozen=True)
class LegacyGenerate:
    prompt: str
    session_id: str | None
    config: GenerationConfig


@dataclass(frozen=True)
class LegacyAction:
    action: str  # health | status | clear_session
    session_id: str | None = None


@dataclass
class GenerationJob:
    """One request's generation work: every row (prompt x n) of it runs in the same batched call."""

    prompt_ids: list[list[int]]
    config: GenerationConfig
    history_turns: int = 0

    @property
    def rows(self) -> int:
        return len(self.prompt_ids) * self.config.n

    def __len__(self) -> int:
        # The batcher sorts and budgets work items by length; a job costs about rows x its longest prompt.
        return self.rows * max(map(len, self.prompt_ids))


def _optional_number(body: dict, name: str, *, minimum: float, maximum: float | None = None,
                     exclusive_minimum: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(name, f"must be a number, got {value!r}"[:120])
    low_ok = value > minimum if exclusive_minimum else value >= minimum
    if not low_ok or (maximum is not None and value > maximum):
        low = f"({minimum}" if exclusive_minimum else f"[{minimum}"
        raise RequestError(name, f"must be in {low}, {maximum if maximum is not None else 'inf'}], got {value}")
    return float(value)


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


def _reject_training(body: dict, served_name: str) -> None:
    """The old handler trained inside requests; say where training lives now instead of "unknown field"."""
    asked = next((f for f in _TRAINING_FIELDS if f in body), None)
    if body.get("train_before_generate"):
        asked = "train_before_generate"
    if body.get("action") in _TRAINING_ACTIONS:
        asked = "action"
    if asked is not None:
        raise RequestError(asked, training_moved_message(served_name))


def training_moved_message(served_name: str) -> str:
    return (
        "training no longer runs inside a serving request. Train with the pipeline (`mlflow run .` with this "
        "repository's MLproject, or the Kubeflow pipeline in pipelines/); it registers a new version of "
        f"'{served_name}' and moves the @champion alias when the new version is better. A server started with "
        f"`mlflow models serve -m models:/{served_name}@champion` picks the new version up when restarted; "
        f"serve a given version with -m models:/{served_name}/<version>"
    )


class _RequestParser:
    """Body -> typed request, field by field; every failure is a RequestError naming the field."""

    def __init__(self, limits: Limits, settings: GenerationSettings, context_length: int, mode: str,
                 served_name: str):
        self.limits = limits
        self.settings = settings
        self.context_length = context_length
        self.mode = mode
        self.served_name = served_name

    def parse(self, body) -> TextRequest | LegacyGenerate | LegacyAction:
        if isinstance(body, pd.DataFrame):
            return self.batch_frame(body)
        if isinstance(body, str):
            body = [body]
        if isinstance(body, list):
            return self.batch_list(body)
        body = expect_object(body, "request")
        if "messages" in body:
            return self.chat(body)
        if "prompt" in body:
            return self.completion(body)
        if "input" in body:
            return self.legacy(expect_object(body["input"], "input"))
        raise RequestError(
            "request", "expected a completions body (prompt), a chat body (messages), the old handler's "
                       "{\"input\": {\"action\": ...}}, or a batch (inputs / dataframe_split with a prompt column)"
        )

    # -- OpenAI -------------------------------------------------------------------------------------------

    def completion(self, body: dict) -> TextRequest:
        reject_unknown(body, _COMPLETION_FIELDS)
        self._client_fields(body)
        prompts = self._prompts(body["prompt"], "prompt")
        config = self.sampling(body, "max_tokens", n=self._n(body, len(prompts)))
        return TextRequest("completion", prompts, "prompt", config)

    def chat(self, body: dict) -> TextRequest:
        reject_unknown(body, _CHAT_FIELDS)
        self._client_fields(body)
        messages = body["messages"]
        if not isinstance(messages, list):
            raise RequestError("messages", "must be a list of {role, content} objects")
        check_count(messages, "messages", self.limits)
        total = 0
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            message = expect_object(message, where)
            reject_unknown(message, _MESSAGE_FIELDS, where, path=where)
            if message.get("role") not in ("system", "user", "assistant"):
                raise RequestError(f"{where}.role", "must be 'system', 'user' or 'assistant'")
            total += len(text(message.get("content"), f"{where}.content", self.limits))
        if total > self.limits.max_chars:
            raise RequestError("messages", f"hold {total} characters in all; the limit is {self.limits.max_chars}")
        turns = [m for m in messages if m["role"] != "system"]
        if not turns or turns[-1]["role"] != "user":
            raise RequestError("messages", "the last message (besides system ones) must be the user's: "
                                           "NeuroQ answers a user turn")
        prompt = NeuroQTokenizer.format_chat([{"role": m["role"], "content": m["content"]} for m in messages])
        config = self.sampling(body, "max_tokens", n=self._n(body, 1))
        return TextRequest("chat", [prompt], "messages", config)

    def _client_fields(self, body: dict) -> None:
        optional_str(body, "model", self.limits)
        optional_str(body, "user", self.limits)
        if optional_bool(body, "stream"):
            raise RequestError("stream", "streaming is not available: mlflow models serve answers a request whole")

    def _prompts(self, value, name: str) -> list[str]:
        if isinstance(value, list) and len(value) > self.settings.max_prompts:
            raise RequestError(name, f"has {len(value)} prompts; the limit is {self.settings.max_prompts}")
        if isinstance(value, str):
            return [text(value, name, self.limits)]
        if not isinstance(value, list) or not value:
            raise RequestError(name, "must be a string or a non-empty list of strings")
        return [text(v, f"{name}[{i}]", self.limits) for i, v in enumerate(value)]

    def _n(self, body: dict, n_prompts: int) -> int:
        n = optional_int(body, "n", minimum=1, maximum=self.settings.max_prompts) or 1
        if n * n_prompts > self.settings.max_prompts:
            raise RequestError("n", f"{n_prompts} prompts x n={n} is {n * n_prompts} sequences; "
                                    f"the limit is {self.settings.max_prompts}")
        return n

    def sampling(self, body: dict, max_field: str, *, n: int = 1) -> GenerationConfig:
        """The sampling fields shared by every generating request; unset ones keep GenerationConfig's defaults."""
        knobs: dict[str, Any] = {"n": n}
        ceiling = min(self.settings.max_new_tokens, self.context_length - 1)
        max_new = optional_int(body, max_field, minimum=1, maximum=ceiling)
        # The library default may not fit a small model's context; a request that names no length still works.
        knobs["max_new_tokens"] = max_new if max_new is not None else min(GenerationConfig().max_new_tokens, ceiling)
        for name, low, high, exclusive in (("temperature", 0, _MAX_TEMPERATURE, False),
                                           ("temp_min", 0, _MAX_TEMPERATURE, False),
                                           ("temp_max", 0, _MAX_TEMPERATURE, False), ("top_p", 0, 1, True),
                                           ("repetition_penalty", 0, _MAX_REPETITION_PENALTY, True)):
            value = _optional_number(body, name, minimum=low, maximum=high, exclusive_minimum=exclusive)
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

    # -- batch scoring ------------------------------------------------------------------------------------

    def batch_list(self, rows: list) -> TextRequest:
        prompts = self._prompts(rows, "inputs")
        return TextRequest("batch", prompts, "inputs", self.sampling({}, "max_tokens"))

    def batch_frame(self, frame: pd.DataFrame) -> TextRequest:
        if "prompt" not in frame.columns:
            columns = ", ".join(map(str, frame.columns))[:100]
            raise RequestError("prompt", f"batch input needs a 'prompt' column; got columns {columns}")
        reject_unknown(dict.fromkeys(map(str, frame.columns)), _BATCH_FIELDS, "batch columns")
        prompts = self._prompts(frame["prompt"].tolist(), "prompt")
        knobs = {}
        for column in frame.columns:
            if column == "prompt":
                continue
            values = {repr(v) for v in frame[column].tolist()}
            if len(values) > 1:
                raise RequestError(column, "must hold one value for every row: a batch runs as one generate call")
            knobs[column] = plain(frame[column].iloc[0])
        return TextRequest("batch", prompts, "prompt", self.sampling(knobs, "max_tokens"))

    # -- the old handler ----------------------------------------------------------------------------------

    def legacy(self, body: dict) -> LegacyGenerate | LegacyAction:
        # The fields live inside "input"; errors name them by their full path.
        try:
            return self._legacy(body)
        except RequestError as exc:
            raise RequestError(f"input.{exc.field}", exc.message[len(exc.field) + 2:]) from None

    def _legacy(self, body: dict) -> LegacyGenerate | LegacyAction:
        action = body.get("action")
        if not isinstance(action, str):
            raise RequestError("action", f"is required: one of {', '.join(_ACTIONS)}")
        _reject_training(body, self.served_name)
        if action not in _ACTIONS:
            raise RequestError("action", f"must be one of {', '.join(_ACTIONS)}, got {action[:40]!r}")
        if action == "generate":
            return self._legacy_generate(body)
        reject_unknown(body, ("action", "session_id") if action == "clear_session" else ("action",), "input")
        return LegacyAction(action, self._session_id(body, required=action == "clear_session"))

    def _legacy_generate(self, body: dict) -> LegacyGenerate:
        reject_unknown(body, _LEGACY_GENERATE_FIELDS, "input")
        if "prompt" not in body:
            raise RequestError("prompt", "is required")
        prompt = text(body["prompt"], "prompt", self.limits)
        session_id = self._session_id(body, required=False)
        mode = optional_choice(body, "mode", ("layered", "brain", "gpt"))
        if mode is not None and mode != self.mode:
            raise RequestError("mode", f"this server serves a {self.mode!r} model, not {mode!r}; serve a {mode!r} "
                                       "model (another registered model or version) for that mode")
        knobs = dict(body)
        if "temp_min" not in body and "temp_max" not in body:
            temperature = _optional_number(body, "temperature", minimum=0, maximum=_MAX_TEMPERATURE)
            if temperature is None:
                temperature = GenerationConfig().temperature
            low, high = _LEGACY_TEMPERATURE_SPAN
            knobs["temp_min"], knobs["temp_max"] = low * temperature, high * temperature
        return LegacyGenerate(prompt, session_id, self.sampling(knobs, "max_length"))

    def _session_id(self, body: dict, *, required: bool) -> str | None:
        value = body.get("session_id")
        if value is None:
            if required:
                raise RequestError("session_id", "is required")
            return None
        if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
            raise RequestError("session_id", "must be 1-128 letters, digits, '_', '.', ':' or '-', starting with a "
                                             "letter or digit")
        return value


# ------------------------------------------------------------------------------------------------ the pyfunc


class NeuroQGenerationModel(ServingModel):
    """The NeuroQ pyfunc: artifacts ``weights``, ``config``, ``tokenizer`` (a checkpoint) and their digests."""

    def load(self, context) -> None:
        # ServingModel.load_context has verified every artifact against its recorded digest by now.
        model_dir = logged_model_dir(context)
        logged = (mlflow.models.Model.load(str(model_dir)).metadata or {}).get("neuroq") or {}
        paths = {key: Path(context.artifacts[key]) for key in ARTIFACT_FILES if key in context.artifacts}
        checkpoint_dirs = {path.parent for path in paths.values()}
        if len(checkpoint_dirs) != 1:
            raise CheckpointError(f"the checkpoint files of {model_dir} are not in one folder: "
                                  f"{sorted(map(str, checkpoint_dirs))}")
        self.device = pick_device()
        loaded = load_checkpoint(checkpoint_dirs.pop(), device=self.device)
        self.model, self.tokenizer, self.model_config = loaded.model, loaded.tokenizer, loaded.config
        self.settings = GenerationSettings.from_env()
        self.max_rows_per_call = BatchConfig.from_env().batch_size
        self.served = resolve_served_model(self.settings.model_uri, logged.get("registered_model_name"))
        self.sessions = SessionStore(
            self.settings.session_dir,
            max_turns=self.settings.session_max_turns,
            max_tokens=self.settings.session_max_tokens,
            ttl_seconds=self.settings.session_ttl_s,
        )
        self.parser = _RequestParser(self.limits, self.settings, self.model_config.max_seq_len,
                                     self.model_config.mode, self.served.name)
        logger.info("NeuroQ %s model (%s parameters) on %s serving as %s", self.model_config.mode,
                    f"{self.model.num_params(non_embedding=False):,}", self.device, self.served)

    def parse(self, body):
        return self.parser.parse(body)

    def prepare(self, request) -> list[GenerationJob]:
        if isinstance(request, LegacyAction):
            return []
        if isinstance(request, LegacyGenerate):
            history = self.sessions.history(request.session_id) if request.session_id else []
            # Messages rather than (user, assistant) pairs: an empty earlier answer is a valid turn here.
            messages = [{"role": role, "content": content} for turn in history
                        for role, content in (("user", turn.user), ("assistant", turn.assistant))]
            messages.append({"role": "user", "content": request.prompt})
            prompt_ids = self._encode([NeuroQTokenizer.format_chat(messages)], "input.prompt", request.config)
            return [GenerationJob(prompt_ids, request.config, history_turns=len(history))]
        return [GenerationJob(self._encode(request.prompts, request.field, request.config), request.config)]

    def _encode(self, texts: list[str], name: str, config: GenerationConfig) -> list[list[int]]:
        # bos first, as generate() and training do; the length check mirrors generate_ids' own budget.
        ids = self.tokenizer.encode_batch(texts, add_bos=True)
        budget = self.model_config.max_seq_len - config.max_new_tokens
        if config.truncation == "error":
            for i, row in enumerate(ids):
                if len(row) > budget:
                    where = name if len(ids) == 1 else f"{name}[{i}]"
                    raise RequestError(where, f"is {len(row)} tokens, but with {config.max_new_tokens} new tokens "
                                              f"only {budget} fit in the model's {self.model_config.max_seq_len}-"
                                              "token context: shorten it, ask for fewer tokens, or drop "
                                              "\"truncate\": false to cut it from the left")
        return ids

    def run_batch(self, jobs: list[GenerationJob]) -> list[list[list[Sample]]]:
        results: list[list[list[Sample]] | None] = [None] * len(jobs)
        for group in self._merge(jobs):
            rows = [ids for j in group for ids in jobs[j].prompt_ids]
            samples = generate_ids(self.model, rows, jobs[group[0]].config, decode=self.tokenizer.decode)
            start = 0
            for j in group:
                results[j] = samples[start:start + len(jobs[j].prompt_ids)]
                start += len(jobs[j].prompt_ids)
        return results

    def _merge(self, jobs: list[GenerationJob]) -> list[list[int]]:
        """Jobs that can share one generate call: equal settings, no seed, at most BATCH_SIZE rows together."""
        groups: list[list[int]] = []
        for j, job in enumerate(jobs):
            if job.config.seed is None:
                for group in groups:
                    head = jobs[group[0]]
                    if head.config == job.config and sum(jobs[g].rows for g in group) + job.rows \
                            <= self.max_rows_per_call:
                        group.append(j)
                        break
                else:
                    groups.append([j])
            else:
                groups.append([j])
        return groups

    def respond(self, request, jobs: list[GenerationJob], outputs: list) -> Any:
        if isinstance(request, LegacyAction):
            return self._legacy_action(request)
        per_prompt: list[list[Sample]] = outputs[0]
        if isinstance(request, LegacyGenerate):
            sample = per_prompt[0][0]
            if request.session_id:
                tokens = len(self.tokenizer.encode(request.prompt)) + sample.completion_tokens
                self.sessions.append(request.session_id, request.prompt, sample.text, tokens)
            return {
                "status": "success",
                "prompt": request.prompt,
                "generated": sample.text,
                "session_id": request.session_id,
                "finish_reason": sample.finish_reason,
                "history_turns": jobs[0].history_turns,
                "worker_pid": os.getpid(),
            }
        if request.kind == "batch":
            return [samples[0].text for samples in per_prompt]
        return self._openai(request, per_prompt)

    def _openai(self, request: TextRequest, per_prompt: list[list[Sample]]) -> dict:
        chat = request.kind == "chat"
        choices = []
        for i, samples in enumerate(per_prompt):
            for j, sample in enumerate(samples):
                choice: dict[str, Any] = {"index": i * request.config.n + j}
                if chat:
                    choice["message"] = {"role": "assistant", "content": sample.text}
                else:
                    choice.update(text=sample.text, logprobs=None)
                choice["finish_reason"] = sample.finish_reason
                choices.append(choice)
        prompt_tokens = sum(samples[0].prompt_tokens for samples in per_prompt)
        completion_tokens = sum(s.completion_tokens for samples in per_prompt for s in samples)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.served.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _legacy_action(self, request: LegacyAction) -> dict:
        if request.action == "health":
            return {"status": "healthy", "model_loaded": True}
        if request.action == "clear_session":
            cleared = self.sessions.clear(request.session_id)
            return {"status": "success", "session_id": request.session_id, "cleared_turns": cleared}
        return {
            "status": "ready",
            "model_name": self.served.name,
            "model_version": self.served.version,
            "model_alias": self.served.alias,
            "model_uri": self.served.uri,
            "device": str(self.device),
            "mode": self.model_config.mode,
            "vocab_size": self.tokenizer.vocab_size,
            "max_seq_len": self.model_config.max_seq_len,
            "parameters": self.model.num_params(non_embedding=False),
            "worker_pid": os.getpid(),
        }


# ------------------------------------------------------------------------------------------------ logging


def log_neuroq_model(
    checkpoint_dir: str | os.PathLike[str],
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log a NeuroQ checkpoint directory as the generation pyfunc (in the active run, if any); returns ModelInfo.

    The checkpoint is copied aside and loaded once before anything is logged, so a Git LFS pointer, a truncated
    file or weights of another architecture fail here (CheckpointError) instead of reaching the registry. With
    ``registered_model_name`` the model is also registered as a new version (aliases are the caller's choice).
    ``metadata`` is merged into the MLmodel metadata beside the ``neuroq`` entry this function writes.
    ``pip_requirements`` replaces the default pins of the packages the pyfunc imports.
    """
    source = Path(checkpoint_dir)
    with tempfile.TemporaryDirectory(prefix="neuroq-log-") as tmp:
        staged = Path(tmp) / "checkpoint"
        staged.mkdir()
        for filename in ARTIFACT_FILES.values():
            if not (source / filename).is_file():
                raise CheckpointError(f"{source} is not a NeuroQ checkpoint: {filename} is missing")
            shutil.copyfile(source / filename, staged / filename)
        # What is verified and hashed is the staged copy, exactly the bytes MLflow uploads.
        loaded = load_checkpoint(staged)
        artifacts = {key: str(staged / filename) for key, filename in ARTIFACT_FILES.items()}
        neuroq_metadata = {
            "mode": loaded.config.mode,
            "vocab_size": loaded.tokenizer.vocab_size,
            "max_seq_len": loaded.config.max_seq_len,
            "parameters": loaded.model.num_params(non_embedding=False),
            "registered_model_name": registered_model_name,
        }
        model_code = Path(tmp) / "neuroq_generation_model.py"
        model_code.write_text(_MODEL_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=artifacts,
            code_paths=stage_code(Path(tmp) / "code"),
            pip_requirements=list(pip_requirements) if pip_requirements is not None else default_requirements(),
            metadata={**(metadata or {}), "neuroq": neuroq_metadata, **integrity_metadata(artifacts)},
            registered_model_name=registered_model_name,
        )
    logger.info("logged NeuroQ model %s%s", info.model_uri,
                f" as {registered_model_name} version {info.registered_model_version}" if registered_model_name else "")
    return info


def default_requirements() -> list[str]:
    # A local version label (torch 2.13.0+cpu) is not on PyPI: pin the release and let each host pick its build.
    return [f"{package}=={installed_version(package).split('+')[0]}" for package in _REQUIREMENTS]
