"""The OpenAI-compatible front: the registered models served to the clients people already have (the OpenAI SDK,
Cohere and Jina rerank clients, chat UIs that stream), beside ``mlflow models serve``'s ``/invocations``.

    python -m serving openai --generate models:/neuroq@champion --embed models:/ruri-embed@champion \\
        --rerank models:/ruri-rerank@champion -p 8000

  config.py   FrontConfig: which models, where to listen, the API key, the body size limit
  models.py   each model loaded with mlflow.pyfunc.load_model (integrity checks included), its ids and version
  errors.py   OpenAIError and the error body {"error": {"message", "type", "param", "code"}}
  app.py      the FastAPI app: routes, auth, body reading, server-sent events; serve() runs it under uvicorn

Family-independent: a route hands the JSON body to its model's own ``predict`` (or ``predict_stream``), so the
request parsing, limits, batching and answers are the models' and exist once; the front adds only what HTTP
needs (auth, the model id, body size, status codes, SSE framing).
"""
