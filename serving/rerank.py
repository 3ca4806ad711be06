"""Rerank pyfunc: the Cohere (v1/v2) and Jina rerank request and response.

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
Response: {"model", "results": [{"index", "relevance_score", "document": {"text"}}], "usage":
{"prompt_tokens", "total_tokens"}}, best first.

Scores come from a cross-encoder (sigmoid of its logit, in [0, 1]) or, when the logged model is a
bi-encoder, from the cosine of the query and document embeddings (query/document prompts applied),
in [-1, 1]. The logged model's `scorer` (model_config) decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.embeddings import with_prefix
from serving.encoder import BI_ENCODER, CROSS_ENCODER, TransformerRunner, l2_normalize, load_model
from serving.protocol import (
    Limits,
    RequestError,
    ServingModel,
    check_count,
    check_total_tokens,
    clip_name,
    expect_object,
    optional_bool,
    optional_int,
    optional_str,
    reject_unknown,
    text,
)

FIELDS = ("query", "documents", "model", "top_n", "top_k", "return_documents")


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool = False


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
    )


def _document_text(document, field: str, limits: Limits) -> str:
    if isinstance(document, dict):
        if set(document) != {"text"}:
            raise RequestError(field, "a document object takes exactly one field, text")
        return text(document["text"], f"{field}.text", limits)
    return text(document, field, limits)


class RerankModel(ServingModel):
    """mlflow pyfunc over a sentence-transformers CrossEncoder, or a bi-encoder scored by cosine."""

    def load(self, context) -> None:
        config = context.model_config or {}
        self.name = config.get("model_name", "rerank")
        self.scorer = config.get("scorer", CROSS_ENCODER)
        self.runner = TransformerRunner(load_model(context.artifacts["model"], self.scorer), self.scorer)
        prompts = dict(self.runner.model.prompts or {})
        self.query_prefix = prompts.get("query", "")
        self.document_prefix = prompts.get("document", "")

    def parse(self, body) -> RerankRequest:
        return parse_rerank_request(body, self.limits)

    def prepare(self, request: RerankRequest) -> list:
        if self.scorer == CROSS_ENCODER:
            items = self.runner.tokenize_pairs([(request.query, d) for d in request.documents])
        else:
            query = with_prefix([request.query], self.query_prefix)
            items = self.runner.tokenize(query + with_prefix(request.documents, self.document_prefix))
        check_total_tokens(sum(map(len, items)), "documents", self.limits)
        return items

    def run_batch(self, items: list) -> np.ndarray:
        return self.runner.score(items) if self.scorer == CROSS_ENCODER else self.runner.embed(items)

    def respond(self, request: RerankRequest, items: list, outputs: list) -> dict:
        if self.scorer == BI_ENCODER:
            vectors = l2_normalize(np.stack(outputs))
            scores = vectors[1:] @ vectors[0]
        else:
            scores = np.asarray(outputs, dtype=np.float32)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: request.top_n]
        results = []
        for i in order:
            result = {"index": i, "relevance_score": float(scores[i])}
            if request.return_documents:
                result["document"] = {"text": request.documents[i]}
            results.append(result)
        n_tokens = sum(map(len, items))
        return {"model": self.name, "results": results, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
