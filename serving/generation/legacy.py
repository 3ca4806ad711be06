"""The actions of the RunPod serverless handler this server replaces, as ``{"input": {"action": ...}}`` bodies.

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

This module parses those bodies; model.py answers them.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuroq.generate import GenerationConfig
from serving.base.request import RequestError, optional_choice, optional_number, reject_unknown, text
from serving.base.settings import Limits
from serving.generation.sampling import MAX_TEMPERATURE, SAMPLING_FIELDS, parse_sampling
from serving.generation.sessions import SESSION_ID_PATTERN

__all__ = ["LEGACY_GENERATE_FIELDS", "TRAINING_FIELDS", "LegacyAction", "LegacyGenerate", "LegacyParser",
           "training_moved_message"]

LEGACY_GENERATE_FIELDS = ("action", "prompt", "max_length", "session_id", "mode", "train_before_generate",
                          *SAMPLING_FIELDS)
_ACTIONS = ("health", "status", "generate", "clear_session")
_TRAINING_ACTIONS = ("train", "init")
# What the old handler's train / init / train_before_generate requests carried.
TRAINING_FIELDS = ("data_sources", "common_crawl_config", "epochs", "batch_size", "learning_rate", "lr",
                   "seq_length", "texts", "checkpoint_path", "embed_dim", "hidden_dim", "num_heads",
                   "num_layers", "num_neurons")
_LEGACY_TEMPERATURE_SPAN = (0.8, 1.2)  # the old handler's temperature -> (temp_min, temp_max) factors


@dataclass(frozen=True)
class LegacyGenerate:
    prompt: str
    session_id: str | None
    config: GenerationConfig


@dataclass(frozen=True)
class LegacyAction:
    action: str  # health | status | clear_session
    session_id: str | None = None


class LegacyParser:
    """The object under ``input`` -> a typed action; every failure is a RequestError naming ``input.<field>``."""

    def __init__(self, limits: Limits, max_new_tokens: int, mode: str, served_name: str):
        self.limits = limits
        self.max_new_tokens = max_new_tokens
        self.mode = mode
        self.served_name = served_name

    def parse(self, body: dict) -> LegacyGenerate | LegacyAction:
        # The fields live inside "input"; errors name them by their full path.
        try:
            return self._parse(body)
        except RequestError as exc:
            raise RequestError(f"input.{exc.field}", exc.message[len(exc.field) + 2:]) from None

    def _parse(self, body: dict) -> LegacyGenerate | LegacyAction:
        action = body.get("action")
        if not isinstance(action, str):
            raise RequestError("action", f"is required: one of {', '.join(_ACTIONS)}")
        _reject_training(body, self.served_name)
        if action not in _ACTIONS:
            raise RequestError("action", f"must be one of {', '.join(_ACTIONS)}, got {action[:40]!r}")
        if action == "generate":
            return self._generate(body)
        reject_unknown(body, ("action", "session_id") if action == "clear_session" else ("action",), "input")
        return LegacyAction(action, _session_id(body, required=action == "clear_session"))

    def _generate(self, body: dict) -> LegacyGenerate:
        reject_unknown(body, LEGACY_GENERATE_FIELDS, "input")
        if "prompt" not in body:
            raise RequestError("prompt", "is required")
        prompt = text(body["prompt"], "prompt", self.limits)
        session_id = _session_id(body, required=False)
        mode = optional_choice(body, "mode", ("layered", "brain", "gpt"))
        if mode is not None and mode != self.mode:
            raise RequestError("mode", f"this server serves a {self.mode!r} model, not {mode!r}; serve a {mode!r} "
                                       "model (another registered model or version) for that mode")
        knobs = dict(body)
        if "temp_min" not in body and "temp_max" not in body:
            temperature = optional_number(body, "temperature", minimum=0, maximum=MAX_TEMPERATURE)
            if temperature is None:
                temperature = GenerationConfig().temperature
            low, high = _LEGACY_TEMPERATURE_SPAN
            knobs["temp_min"], knobs["temp_max"] = low * temperature, high * temperature
        return LegacyGenerate(prompt, session_id,
                              parse_sampling(knobs, "max_length", max_new_tokens=self.max_new_tokens))


def _session_id(body: dict, *, required: bool) -> str | None:
    value = body.get("session_id")
    if value is None:
        if required:
            raise RequestError("session_id", "is required")
        return None
    if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
        raise RequestError("session_id", "must be 1-128 letters, digits, '_', '.', ':' or '-', starting with a "
                                         "letter or digit")
    return value


def _reject_training(body: dict, served_name: str) -> None:
    """The old handler trained inside requests; say where training lives now instead of "unknown field"."""
    asked = next((f for f in TRAINING_FIELDS if f in body), None)
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
