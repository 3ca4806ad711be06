"""The embeddings pyfunc over a sentence-transformers bi-encoder: the request's texts (with their prefix) are
tokenised once, embedded in the cross-request batches, cut to `dimensions` and L2-normalised."""

from __future__ import annotations

import base64

import numpy as np

from serving.base.encoder import BI_ENCODER, TransformerRunner, l2_normalize, load_model, with_prefix
from serving.base.model import ServingModel
from serving.base.request import RequestError, check_total_tokens
from serving.embeddings.requests import EmbeddingsRequest, parse_embeddings_request

__all__ = ["EmbeddingModel"]


def encode_vector(vector: np.ndarray, encoding_format: str):
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


class EmbeddingModel(ServingModel):
    """mlflow pyfunc over a sentence-transformers bi-encoder; artifacts={"model": saved folder}."""

    def load(self, context) -> None:
        config = context.model_config or {}
        self.name = config.get("model_name", "embeddings")
        self.runner = TransformerRunner(load_model(context.artifacts["model"], BI_ENCODER), BI_ENCODER)
        self.prompts = dict(self.runner.model.prompts)
        self.dimension = self.runner.dimension

    def parse(self, body) -> EmbeddingsRequest:
        return parse_embeddings_request(body, self.limits, self.prompts, self.dimension)

    def prepare(self, request: EmbeddingsRequest) -> list:
        if request.prefix:
            room = self.runner.max_length - self.runner.special_tokens
            n_prefix = self.runner.count_tokens(request.prefix)
            if n_prefix >= room:
                raise RequestError(
                    request.prefix_field,
                    f"its prefix is {n_prefix} tokens; inputs of this model hold {room} tokens besides special tokens",
                )
        items = self.runner.tokenize(with_prefix(request.texts, request.prefix))
        check_total_tokens(sum(map(len, items)), "input", self.limits)
        return items

    def run_batch(self, items: list) -> np.ndarray:
        return self.runner.embed(items)

    def respond(self, request: EmbeddingsRequest, items: list, outputs: list) -> dict:
        vectors = np.stack(outputs)
        if request.dimensions is not None:
            vectors = vectors[:, : request.dimensions]
        vectors = l2_normalize(vectors)
        n_tokens = sum(map(len, items))
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode_vector(v, request.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": self.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
