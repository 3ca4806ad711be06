"""Rerank requests: the Cohere (v1/v2) and Jina rerank request and response.

`mlflow models serve` hands a body to the model untouched only when it has a top-level `input` key,
so the rerank body travels in one of two envelopes (both answered with the same standard response):
  {"input":  {<rerank body>}}   -> <rerank response>                    (unwrapped)
  {"inputs": {<rerank body>}}   -> {"predictions": <rerank response>}   (mlflow's standard envelope)
A bare Cohere body gets mlflow's own 400 before the model sees it.

Rerank body:
  query             str                        required
  documents         [str | {"text": str}]      required, non-empty
  model             str                        accepted for client compatibility
  top_n (or top_k)  int >= 1                   how many results; default all, more than sent is all
  return_documents  bool                       default false: include {"text"} in each result
  max_tokens_per_doc int >= 1                  Cohere v2: each document is cut after its first n tokens (of
                                               the model's tokenizer, special tokens not counted) before scoring
Response: {"model", "results": [{"index", "relevance_score", "document": {"text"}}], "usage":
{"prompt_tokens", "total_tokens"}}, best first.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.base.request import (
    RequestError,
    check_count,
    clip_name,
    expect_object,
    optional_bool,
    optional_int,
    optional_str,
    reject_unknown,
    text,
)
from serving.base.settings import Limits

__all__ = ["FIELDS", "RerankRequest", "parse_rerank_request"]

FIELDS = ("query", "documents", "model", "top_n", "top_k", "return_documents", "max_tokens_per_doc")


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool = False
    max_tokens_per_doc: int | None = None


def parse_rerank_request(body, limits: Limits) -> RerankRequest:
    body = expect_object(body, "request")
    if "input" in body:
        others = sorted(set(body) - {"input"})
        if others:
            raise RequestError(clip_name(others[0]), "put the rerank fields inside input, not next to it")
        body = expect_object(body["input"], "input")
    for required in ("query", "documents"):
        if required not in body:
            raise RequestError(required, "is required")
    reject_unknown(body, FIELDS)
    documents = body["documents"]
    if not isinstance(documents, list):
        raise RequestError("documents", "must be a list of strings or of {\"text\": ...} objects")
    check_count(documents, "documents", limits)
    query = text(body["query"], "query", limits)
    texts = [_document_text(d, f"documents[{i}]", limits) for i, d in enumerate(documents)]
    optional_str(body, "model", limits)
    top_n = optional_int(body, "top_n", minimum=1)
    top_k = optional_int(body, "top_k", minimum=1)
    if top_n is not None and top_k is not None and top_n != top_k:
        raise RequestError("top_k", f"is an alias of top_n; got top_n={top_n} and top_k={top_k}")
    wanted = top_n if top_n is not None else top_k
    return RerankRequest(
        query=query,
        documents=texts,
        top_n=min(wanted or len(texts), len(texts)),
        return_documents=bool(optional_bool(body, "return_documents")),
        max_tokens_per_doc=optional_int(body, "max_tokens_per_doc", minimum=1),
    )


def _document_text(document, field: str, limits: Limits) -> str:
    if isinstance(document, dict):
        if set(document) != {"text"}:
            raise RequestError(field, "a document object takes exactly one field, text")
        return text(document["text"], f"{field}.text", limits)
    return text(document, field, limits)

