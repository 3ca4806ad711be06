"""Sentence embeddings (Ruri v3 and other sentence-transformers bi-encoders) served as an MLflow pyfunc in the
OpenAI ``/v1/embeddings`` shape.

  requests.py   body -> EmbeddingsRequest (fields, prefixes, limits)
  model.py      the pyfunc: tokenise, embed in batches, respond
  entry.py      the models-from-code entry point the logged model runs (logged by serving.ruri.register)
"""
