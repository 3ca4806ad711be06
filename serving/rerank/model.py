"""The rerank pyfunc: scores come from a cross-encoder (sigmoid of its logit, in [0, 1]) or, when the logged model
is a bi-encoder, from the cosine of the query and document embeddings (query/document prompts applied), in
[-1, 1]. The logged model's `scorer` (model_config) decides. Results are sorted best first."""

from __future__ import annotations

import numpy as np

from serving.base.encoder import BI_ENCODER, CROSS_ENCODER, TransformerRunner, l2_normalize, load_model, with_prefix
from serving.base.model import ServingModel
from serving.base.request import check_total_tokens
from serving.rerank.requests import RerankRequest, parse_rerank_request

__all__ = ["RerankModel"]


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
        documents = request.documents
        if request.max_tokens_per_doc is not None:
            documents = self.runner.first_tokens(documents, request.max_tokens_per_doc)
        if self.scorer == CROSS_ENCODER:
            items = self.runner.tokenize_pairs([(request.query, d) for d in documents])
        else:
            query = with_prefix([request.query], self.query_prefix)
            items = self.runner.tokenize(query + with_prefix(documents, self.document_prefix))
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
