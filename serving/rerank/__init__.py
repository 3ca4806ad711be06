"""Reranking (Ruri v3 reranker and other sentence-transformers cross-encoders, or a bi-encoder scored by cosine)
served as an MLflow pyfunc in the Cohere (v1/v2) and Jina rerank shape.

  requests.py   body -> RerankRequest (fields, limits)
  model.py      the pyfunc: tokenise pairs (or texts), score in batches, respond
  entry.py      the models-from-code entry point the logged model runs (logged by serving.ruri.register)
"""
