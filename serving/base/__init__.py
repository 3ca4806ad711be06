"""What every served model shares; the model families (generation/, embeddings/, rerank/) fill in the rest.

  settings.py       NEUROQ_SERVING_* variables -> frozen settings dataclasses (limits, batching, device)
  request.py        RequestError and the field validators every request parser is built from
  batcher.py        the cross-request micro-batcher: one model thread, length-sorted batches
  model.py          ServingModel, the pyfunc base: verify, parse -> prepare -> batch -> respond
  scoring_guard.py  4xx instead of 5xx for bodies MLflow's scoring server fails to parse
  integrity.py      artifact digests recorded at logging and checked at every load
  served.py         which registered model (name, version, alias) a server answers for
  log_model.py      how every served model is logged (models-from-code, digests, code_paths)
  encoder.py        the sentence-transformers runner shared by embeddings and rerank
"""
