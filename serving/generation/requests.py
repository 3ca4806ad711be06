"""Request shapes of the NeuroQ generation pyfunc at ``POST /invocations`` (JSON), parsed into typed requests.

The model is logged without a signature, so MLflow hands a body with a top-level ``prompt``, ``messages`` or
``input`` key to ``predict`` untouched and returns the answer as is; the batch-scoring envelopes (``inputs``,
``dataframe_split``, ``dataframe_records``) arrive parsed and the answer is wrapped in ``{"predictions": ...}``.

  {"prompt": str | [str], ...}      OpenAI completion, raw text in -> {"id", "object": "text_completion",
                                    "created", "model", "choices": [{"index", "text", "finish_reason",
                                    "logprobs": null}], "usage": {"prompt_tokens", "completion_tokens",
                                    "total_tokens"}}; with n > 1, choice i * n + j is sample j of prompt i
  {"messages": [{"role", "content"}], ...}
                                    OpenAI chat -> the same with "object": "chat.completion" and
                                    choices[].message = {"role": "assistant", "content"}. Turns become
                                    "<USER>…<ASSISTANT>…" (NeuroQTokenizer.format_chat), system text is a prefix of
                                    the first user turn, and the last message must be the user's.
  {"input": {"action": ...}}        the old handler's actions (legacy.py)
  {"inputs": [str, ...]}, or dataframe_split / dataframe_records with a "prompt" column
                                    batch scoring -> {"predictions": [generated text, ...]} in row order.
                                    Other columns must be sampling fields of the completions request, with
                                    one value for every row. ``{"inputs": {...}}`` around any body above is
                                    answered like that body, inside "predictions".

Completions and chat take the sampling fields of sampling.py, ``n``, and ``model``, ``user`` and ``stream: false``
for client compatibility. ``predict_stream`` (the OpenAI front's ``"stream": true``, or mlflow.pyfunc in-process) parses
the same bodies with ``streaming=True``: ``stream`` may then be true, and ``stream_options: {"include_usage": true}``
adds a last chunk with the usage. Every bad value is an HTTP 400 whose message starts with the field's path
(``messages[2].content: ...``); sizes are checked before any text is tokenised (base/request.py says why that
matters under ``mlflow models serve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from neuroq.generate import GenerationConfig
from neuroq.tokenizer import NeuroQTokenizer
from serving.base.request import (
    RequestError,
    check_count,
    expect_object,
    optional_bool,
    optional_int,
    optional_str,
    plain,
    reject_unknown,
    text,
)
from serving.base.settings import Limits
from serving.generation.legacy import LegacyAction, LegacyGenerate, LegacyParser
from serving.generation.sampling import SAMPLING_FIELDS, parse_sampling
from serving.generation.settings import GenerationSettings

__all__ = ["BATCH_FIELDS", "CHAT_FIELDS", "COMPLETION_FIELDS", "RequestParser", "TextRequest"]

COMPLETION_FIELDS = ("prompt", "max_tokens", "n", "model", "user", "stream", "stream_options", *SAMPLING_FIELDS)
CHAT_FIELDS = ("messages", "max_tokens", "n", "model", "user", "stream", "stream_options", *SAMPLING_FIELDS)
BATCH_FIELDS = ("prompt", "max_tokens", *SAMPLING_FIELDS)
_MESSAGE_FIELDS = ("role", "content", "name")


@dataclass(frozen=True)
class TextRequest:
    """Completions, chat and batch scoring: prompts ready for the model, and how to answer."""

    kind: str  # "completion" | "chat" | "batch"
    prompts: list[str]
    field: str  # where the prompts came from, for errors about their length
    config: GenerationConfig
    include_usage: bool = False  # a stream's stream_options.include_usage


class RequestParser:
    """Body -> typed request, field by field; every failure is a RequestError naming the field."""

    def __init__(self, limits: Limits, settings: GenerationSettings, context_length: int, mode: str,
                 served_name: str):
        self.limits = limits
        self.max_prompts = settings.max_prompts
        self.max_new_tokens = min(settings.max_new_tokens, context_length - 1)
        self.legacy = LegacyParser(limits, self.max_new_tokens, mode, served_name)

    def parse(self, body, *, streaming: bool = False) -> TextRequest | LegacyGenerate | LegacyAction:
        """``streaming``: the caller streams the answer (predict_stream), so ``stream`` may be true."""
        if isinstance(body, pd.DataFrame):
            return self.batch_frame(body)
        if isinstance(body, str):
            body = [body]
        if isinstance(body, list):
            return self.batch_list(body)
        body = expect_object(body, "request")
        if "messages" in body:
            return self.chat(body, streaming=streaming)
        if "prompt" in body:
            return self.completion(body, streaming=streaming)
        if "input" in body:
            return self.legacy.parse(expect_object(body["input"], "input"))
        raise RequestError(
            "request", "expected a completions body (prompt), a chat body (messages), the old handler's "
                       "{\"input\": {\"action\": ...}}, or a batch (inputs / dataframe_split with a prompt column)"
        )

    # -- OpenAI -------------------------------------------------------------------------------------------

    def completion(self, body: dict, *, streaming: bool = False) -> TextRequest:
        reject_unknown(body, COMPLETION_FIELDS)
        include_usage = self._client_fields(body, streaming)
        prompts = self._prompts(body["prompt"], "prompt")
        config = self._sampling(body, n=self._n(body, len(prompts)))
        return TextRequest("completion", prompts, "prompt", config, include_usage)

    def chat(self, body: dict, *, streaming: bool = False) -> TextRequest:
        reject_unknown(body, CHAT_FIELDS)
        include_usage = self._client_fields(body, streaming)
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
        config = self._sampling(body, n=self._n(body, 1))
        return TextRequest("chat", [prompt], "messages", config, include_usage)

    def _client_fields(self, body: dict, streaming: bool) -> bool:
        """Checks model, user, stream and stream_options; returns stream_options.include_usage."""
        optional_str(body, "model", self.limits)
        optional_str(body, "user", self.limits)
        stream = optional_bool(body, "stream")
        if stream and not streaming:
            raise RequestError("stream", "streaming is not available: mlflow models serve answers a request whole; "
                                         "stream with predict_stream or the OpenAI front (python -m serving openai)")
        options = body.get("stream_options")
        if options is None:
            return False
        if not (stream or streaming):
            raise RequestError("stream_options", "is only allowed with \"stream\": true")
        options = expect_object(options, "stream_options")
        reject_unknown(options, ("include_usage",), "stream_options", path="stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise RequestError("stream_options.include_usage", "must be true or false")
        return include_usage

    def _prompts(self, value, name: str) -> list[str]:
        if isinstance(value, list) and len(value) > self.max_prompts:
            raise RequestError(name, f"has {len(value)} prompts; the limit is {self.max_prompts}")
        if isinstance(value, str):
            return [text(value, name, self.limits)]
        if not isinstance(value, list) or not value:
            raise RequestError(name, "must be a string or a non-empty list of strings")
        return [text(v, f"{name}[{i}]", self.limits) for i, v in enumerate(value)]

    def _n(self, body: dict, n_prompts: int) -> int:
        n = optional_int(body, "n", minimum=1, maximum=self.max_prompts) or 1
        if n * n_prompts > self.max_prompts:
            raise RequestError("n", f"{n_prompts} prompts x n={n} is {n * n_prompts} sequences; "
                                    f"the limit is {self.max_prompts}")
        return n

    def _sampling(self, body: dict, *, n: int = 1) -> GenerationConfig:
        return parse_sampling(body, "max_tokens", max_new_tokens=self.max_new_tokens, n=n)

    # -- batch scoring ------------------------------------------------------------------------------------

    def batch_list(self, rows: list) -> TextRequest:
        prompts = self._prompts(rows, "inputs")
        return TextRequest("batch", prompts, "inputs", self._sampling({}))

    def batch_frame(self, frame: pd.DataFrame) -> TextRequest:
        if "prompt" not in frame.columns:
            columns = ", ".join(map(str, frame.columns))[:100]
            raise RequestError("prompt", f"batch input needs a 'prompt' column; got columns {columns}")
        reject_unknown(dict.fromkeys(map(str, frame.columns)), BATCH_FIELDS, "batch columns")
        prompts = self._prompts(frame["prompt"].tolist(), "prompt")
        knobs = {}
        for column in frame.columns:
            if column == "prompt":
                continue
            values = {repr(v) for v in frame[column].tolist()}
            if len(values) > 1:
                raise RequestError(column, "must hold one value for every row: a batch runs as one generate call")
            knobs[column] = plain(frame[column].iloc[0])
        return TextRequest("batch", prompts, "prompt", self._sampling(knobs))
