"""NeuroQ text generation served as an MLflow pyfunc: OpenAI completions and chat, the old handler's actions,
batch scoring.

  requests.py   body -> typed request (completions, chat, batch rows), dispatching ``input`` bodies to legacy.py
  legacy.py     the old RunPod handler's actions (health, status, generate, clear_session)
  sampling.py   the sampling fields every generating request shares -> GenerationConfig
  settings.py   NEUROQ_SERVING_* variables of generation
  sessions.py   conversation history behind ``session_id``, shared by every server worker
  model.py      the pyfunc: prepare, batched generation, predict_stream
  responses.py  the OpenAI completions / chat answers, whole and as stream chunks
  stream.py     one request streamed out of the batched decoder
  entry.py      the models-from-code entry point the logged model runs
  log.py        log_neuroq_model: a checkpoint -> a logged (and registered) model
"""
