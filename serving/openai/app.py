"""The OpenAI-compatible HTTP front over the loaded models (Starlette, the ASGI core of FastAPI, under uvicorn).

  POST /v1/embeddings         OpenAI embeddings (+ Ruri's input_type, instruction, apply_ruri_prefix)  -> embed
  POST /v1/completions        OpenAI completions, "stream": true as server-sent events                -> generate
  POST /v1/chat/completions   OpenAI chat, "stream": true as server-sent events                       -> generate
  POST /v1/rerank             a bare Cohere (v1) / Jina rerank body                                   -> rerank
  POST /v2/rerank             Cohere v2 rerank                                                        -> rerank
  GET  /v1/models             the loaded models' ids; GET /v1/models/{id} one of them
  GET  /health                200 once every model is loaded (they load before the port opens); no key needed

A body goes to its model's ``predict`` as the JSON object it is, exactly as a bare body reaches the same pyfunc
at ``/invocations``, and its answer comes back unchanged; a stream is the model's ``predict_stream``, one
``data: <chunk>`` event per chunk and ``data: [DONE]`` at the end. Model calls run in worker threads, where the
models' batchers merge concurrent requests as under ``mlflow models serve``.

A client that goes away mid-stream: Starlette cancels the response, and closing the model's chunk iterator stops
that request's rows in the batched decoder at its next step.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hmac
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

import anyio
from mlflow.exceptions import MlflowException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.base.request import clip_name
from serving.base.scoring_guard import decode_json_object
from serving.base.settings import Limits
from serving.openai.config import FrontConfig
from serving.openai.errors import OpenAIError, from_model_error
from serving.openai.models import FrontModel, load_model

__all__ = ["ROUTES", "app_from_environment", "build_app", "serve"]

logger = logging.getLogger(__name__)

# serve() -> the processes that load the models: uvicorn's workers are new interpreters that import the app by name.
_CONFIG_VARIABLE = "_NEUROQ_OPENAI_FRONT_CONFIG"


@dataclass(frozen=True)
class ModelRoute:
    path: str
    task: str  # the model that answers (config.TASKS)
    # Completions and chat share one model, whose parser tells them apart by their key: each route insists on
    # its own, so a chat body sent to /v1/completions is refused rather than answered as chat.
    required: str | None = None
    foreign: str | None = None

    def check(self, body: dict) -> None:
        if self.required is not None and self.required not in body:
            raise OpenAIError(400, f"{self.required}: is required", param=self.required)
        if self.foreign is not None and self.foreign in body:
            raise OpenAIError(400, f"{self.foreign}: unknown field in a {self.path} request", param=self.foreign)


ROUTES = (
    ModelRoute("/v1/embeddings", "embed"),
    ModelRoute("/v1/completions", "generate", required="prompt", foreign="messages"),
    ModelRoute("/v1/chat/completions", "generate", required="messages"),
    ModelRoute("/v1/rerank", "rerank"),
    ModelRoute("/v2/rerank", "rerank"),
)


class Front:
    """What the routes share: the models by task, the key, the limits."""

    def __init__(self, models: Mapping[str, FrontModel], config: FrontConfig):
        self.models = dict(models)
        self.config = config
        self.max_depth = Limits.from_env().max_depth
        self._key = config.api_key.encode() if config.api_key else None

    def authorize(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes as long whatever the key's first wrong byte: the answer time tells nothing.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._key):
            raise OpenAIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise self._too_large(None)
        return bytes(body)

    def _too_large(self, size: int | None) -> OpenAIError:
        what = f"{size} bytes" if size is not None else "larger than that"
        return OpenAIError(413, f"body: the limit is {self.config.max_body_bytes} bytes "
                                f"(NEUROQ_SERVING_MAX_BODY_BYTES), this one is {what}", code="request_too_large")

    def model_for(self, route: ModelRoute, body: dict) -> FrontModel:
        model = self.models.get(route.task)
        if model is None:
            raise OpenAIError(404, f"this server loads no {route.task} model, so {route.path} is off (start it "
                                   f"with --{route.task} MODEL_URI)", param="model", code="model_not_found")
        named = body.get("model")
        if isinstance(named, str) and named not in model.names:
            raise OpenAIError(404, f"The model '{clip_name(named)}' does not exist here: {route.path} serves "
                                   f"'{model.id}'", param="model", code="model_not_found")
        return model

    def answer(self, route: ModelRoute, raw: bytes) -> Response:
        """Decode, route and run one request (in a worker thread: the model call blocks)."""
        try:
            body = decode_json_object(raw, self.max_depth)
        except MlflowException as error:  # not JSON, not an object, nested too deep: nothing to validate
            raise from_model_error(error, 422) from None
        model = self.model_for(route, body)
        route.check(body)
        if route.task == "generate" and body.get("stream") is True:
            return self.stream(model, body)
        try:
            answer = model.pyfunc.predict(body)
        except MlflowException as error:
            raise from_model_error(error) from None
        return Response(json.dumps(answer, ensure_ascii=False, separators=(",", ":")),
                        media_type="application/json")

    def stream(self, model: FrontModel, body: dict) -> Response:
        if not model.streams:
            raise OpenAIError(400, f"stream: {model.id} version {model.served.version} was logged before streaming "
                                   "existed; log and register it again to stream", param="stream")
        chunks = model.pyfunc.predict_stream(body)
        # mlflow's stream sets a context variable on its first step and resets it on its last: every step must run
        # in the same context, though each runs in whichever worker thread is free.
        context = contextvars.copy_context()
        try:
            # Bad bodies fail before the first chunk: they still get an error status, not a broken stream.
            first = context.run(next, chunks, None)
        except MlflowException as error:
            raise from_model_error(error) from None
        return _EventStream(_events(first, chunks, context))


class _EventStream(StreamingResponse):
    """Server-sent events whose source is closed however the response ends (done, failed, or the client gone)."""

    def __init__(self, events: AsyncIterator[bytes]):
        # no-cache and X-Accel-Buffering: proxies must pass every event on at once.
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def _events(first: dict | None, chunks: Iterator[dict], context: contextvars.Context) -> AsyncIterator[bytes]:
    try:
        chunk = first
        while chunk is not None:
            yield _event(chunk)
            chunk = await run_in_threadpool(context.run, next, chunks, None)
        yield b"data: [DONE]\n\n"
    except Exception as error:  # the 200 is out: the error can only travel as an event (OpenAI's SDK raises it)
        logger.exception("a stream failed after its first chunk")
        yield _event(OpenAIError(500, f"the stream failed: {error}", type="server_error").body())
    finally:
        # GeneratorExit in the model's predict_stream: its rows stop decoding.
        context.run(chunks.close)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def build_app(models: Mapping[str, FrontModel], config: FrontConfig) -> Starlette:
    front = Front(models, config)

    def model_route(route: ModelRoute) -> Route:
        async def endpoint(request: Request) -> Response:
            front.authorize(request)
            raw = await front.read_body(request)
            return await run_in_threadpool(front.answer, route, raw)

        return Route(route.path, endpoint, methods=["POST"])

    async def list_models(request: Request) -> Response:
        front.authorize(request)
        return JSONResponse({"object": "list", "data": [m.describe() for m in front.models.values()]})

    async def get_model(request: Request) -> Response:
        front.authorize(request)
        model_id = request.path_params["model_id"]
        for model in front.models.values():
            if model_id in model.names:
                return JSONResponse(model.describe())
        raise OpenAIError(404, f"The model '{clip_name(model_id)}' does not exist here", param="model",
                          code="model_not_found")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": [m.describe() for m in front.models.values()]})

    routes = [model_route(route) for route in ROUTES] + [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        OpenAIError: _openai_error,
        HTTPException: _http_error,
        Exception: _server_error,
    })


async def _openai_error(request: Request, error: OpenAIError) -> Response:
    return JSONResponse(error.body(), error.status, headers=error.headers)


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own refusals (no such route, wrong method) in OpenAI's shape too."""
    if error.status_code == 404:
        message = f"no route {request.method} {request.url.path}: the routes are in serving/README.md"
    else:
        message = f"{request.method} {request.url.path}: {error.detail}"
    return await _openai_error(request, OpenAIError(error.status_code, message, code="unknown_url"))


async def _server_error(request: Request, error: Exception) -> Response:
    # Starlette re-raises the error after this answer, and uvicorn logs it with its traceback.
    return await _openai_error(request, OpenAIError(500, f"the server failed: {error}", type="server_error"))


def serve(config: FrontConfig) -> None:
    """Serve under uvicorn, in ``config.workers`` processes that each load every model. With one, the models load
    before the port opens; with more, uvicorn's parent holds the port while each worker loads, and a worker that
    cannot load (an integrity or loading error) stops them all rather than being started again."""
    import uvicorn

    if config.api_key is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without an API key: anyone who reaches the port can use the models "
                       "(set NEUROQ_SERVING_API_KEY)", config.host)
    os.environ[_CONFIG_VARIABLE] = json.dumps(dataclasses.asdict(config))
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=config.host, port=config.port,
                workers=config.workers, log_level="info")


def app_from_environment() -> Starlette:
    """uvicorn's app factory, run in every worker: the models of the FrontConfig that serve() left in the
    environment, loaded (integrity checks first), and the app over them."""
    from uvicorn.config import STARTUP_FAILURE

    # A worker is a fresh interpreter: without this its models' log lines (loading, "stream reader gone") are lost.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = FrontConfig(**json.loads(os.environ[_CONFIG_VARIABLE]))
    try:
        models = {task: load_model(task, uri) for task, uri in config.model_uris().items()}
    except Exception:
        logger.exception("the front cannot start: a model did not load")
        sys.exit(STARTUP_FAILURE)  # uvicorn's code for "would fail again": it stops instead of restarting the worker
    return build_app(models, config)
