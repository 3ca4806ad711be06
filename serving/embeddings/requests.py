"""Embeddings requests: the OpenAI `/v1/embeddings` request and response, plus the Ruri v3 extensions of the
user's former FastAPI server (`input_type`, `instruction`, `apply_ruri_prefix`).

Request (`POST /invocations`, the body as is; `{"inputs": {...}}` also works and is answered as
`{"predictions": ...}`):
  input              str | [str]          required; non-empty strings
  model              str                  accepted for client compatibility; the served model answers
  encoding_format    "float" | "base64"   base64 = little-endian float32 bytes, as OpenAI
  dimensions         int                  Matryoshka: keep the first n dimensions and re-normalise
  input_type         query | document | classification | clustering | sts (the logged model's prompts,
                                          Ruri v3's unless registered otherwise)
  instruction        str                  a custom prefix instead of an input_type
  apply_ruri_prefix  bool                 true without input_type: a single string is a query, a list
                                          documents; false: texts go in as they are
  user               str                  accepted and ignored
Response: {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage": {"prompt_tokens", "total_tokens"}}. Embeddings are L2-normalised.

A text that already starts with its prefix is not prefixed again. A text longer than the model's
max_seq_length loses its tail, never its prefix (the prefix is at the head of what gets truncated).
Usage counts the tokens the model ran, from the one tokenisation that feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.base.request import (
    RequestError,
    expect_object,
    optional_bool,
    optional_choice,
    optional_int,
    optional_str,
    reject_unknown,
    text_list,
)
from serving.base.settings import Limits

__all__ = ["FIELDS", "EmbeddingsRequest", "parse_embeddings_request"]

FIELDS = ("input", "model", "encoding_format", "dimensions", "input_type", "instruction", "apply_ruri_prefix", "user")


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    prefix: str
    prefix_field: str  # the field that chose the prefix, for errors about it
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_embeddings_request(body, limits: Limits, prompts: dict[str, str], dimension: int) -> EmbeddingsRequest:
    body = expect_object(body, "request")
    if "input" not in body:
        raise RequestError("input", "is required")
    reject_unknown(body, FIELDS)
    texts = text_list(body["input"], "input", limits, allow_single=True)
    optional_str(body, "model", limits)
    optional_str(body, "user", limits)
    encoding_format = optional_choice(body, "encoding_format", ("float", "base64")) or "float"
    dimensions = optional_int(body, "dimensions", minimum=1, maximum=dimension)
    input_type = optional_choice(body, "input_type", prompts)
    instruction = optional_str(body, "instruction", limits)
    apply_prefix = optional_bool(body, "apply_ruri_prefix")

    if instruction is not None and input_type is not None:
        raise RequestError("instruction", "give either input_type or instruction, not both")
    if apply_prefix is False and (input_type is not None or instruction is not None):
        field = "input_type" if input_type is not None else "instruction"
        raise RequestError("apply_ruri_prefix", f"is false but {field} asks for a prefix")
    if instruction is not None:
        prefix, field = instruction, "instruction"
    elif input_type is not None:
        prefix, field = prompts[input_type], "input_type"
    elif apply_prefix:
        implied = "query" if isinstance(body["input"], str) else "document"
        if implied not in prompts:
            raise RequestError("apply_ruri_prefix", f"this model has no {implied!r} prompt")
        prefix, field = prompts[implied], "apply_ruri_prefix"
    else:
        prefix, field = "", "input"
    return EmbeddingsRequest(texts, prefix, field, encoding_format, dimensions)

