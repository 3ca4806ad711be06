"""Bad-input handling that MLflow's scoring server does before any model code runs, made to answer 4xx.

``mlflow models serve`` (mlflow/pyfunc/scoring_server, MLflow 3.x) parses the body itself and hands ``predict``
the result. For some malformed requests that parsing fails outside its own error handling, and the client gets a
bare ``500 Internal Server Error``:

  * no ``Content-Type`` header: ``None.split`` (AttributeError);
  * JSON nested deeper than Python's recursion limit (about 1000 levels): RecursionError in ``json.loads``;
  * an integer literal of more than 4300 digits: ValueError from Python's int-conversion limit;
  * a body that is valid JSON but not an object is a 400 whose message lists only MLflow's envelopes, and a body
    that is not JSON is a 400 that echoes the whole body back (megabytes for a large one).

A pyfunc cannot catch these: they happen before ``predict``. ``install`` therefore wraps two functions of the
scoring-server module, from ``ServingModel.load_context`` and only inside the server process (the app module
loads the model before it builds the app, and looks both functions up when a request comes):

  * ``invocations``: a request without a Content-Type gets 415, like any other unsupported type;
  * ``_parse_json_data``: the body is decoded here, with every failure a 400 ``body: ...`` that says it is not
    valid JSON (bounded, no echo); integers too long to convert become +-infinity, as JSON numbers too large for
    a float already do (``1e400``), so the model's own checks name the field they were sent in; nesting deeper
    than ``Limits.max_depth`` is refused naming the path; a non-object is refused; a value under ``inputs`` or
    ``instances`` that MLflow would turn into a numpy array larger than the largest request the model accepts
    is refused naming it (numpy stores every string at the width of the longest: 2000 numbers and one
    1 MB string make an 8 GB array); then MLflow's own parsing runs on the decoded object, and its envelope
    errors (a ragged list under ``inputs``, a broken ``dataframe_split``) name the envelope key.

The wrappers check the signatures they expect and install nothing, with a warning, when an MLflow upgrade has
changed them (the fuzz tests in tests/serving*/test_fuzz.py then show the 500s again).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Callable

from mlflow.exceptions import MlflowException

from serving.base.request import RequestError, clip_name
from serving.base.settings import Limits

__all__ = ["check_array_sizes", "decode_json_object", "install"]

logger = logging.getLogger(__name__)

# Set by mlflow for the uvicorn process it starts (mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH).
_SERVER_MODEL_PATH_ENV = "__pyfunc_model_path__"
_ENVELOPES = ("inputs", "instances", "dataframe_split", "dataframe_records")
_MARK = "_neuroq_scoring_guard"
_EXPECTED = {
    "invocations": ["data", "content_type", "model", "input_schema"],
    "_parse_json_data": ["data", "metadata", "input_schema"],
}


def install(limits: Limits) -> bool:
    """Wrap the scoring server's body parsing when running inside it; True when the guard is in place."""
    if not os.environ.get(_SERVER_MODEL_PATH_ENV):
        return False
    from mlflow.pyfunc import scoring_server

    originals = {name: getattr(scoring_server, name, None) for name in _EXPECTED}
    if all(getattr(f, _MARK, False) for f in originals.values()):
        return True  # a second model in the same process
    for name, function in originals.items():
        if function is None or list(inspect.signature(function).parameters) != _EXPECTED[name]:
            logger.warning("mlflow's scoring server has no %s(%s): bad-input guard not installed, malformed "
                           "bodies may get HTTP 500", name, ", ".join(_EXPECTED[name]))
            return False
    scoring_server.invocations = _marked(_invocations(originals["invocations"], scoring_server))
    scoring_server._parse_json_data = _marked(_parse_json_data(originals["_parse_json_data"], limits))
    return True


def _marked(function: Callable) -> Callable:
    setattr(function, _MARK, True)
    return function


def _invocations(original: Callable, scoring_server) -> Callable:
    def invocations(data, content_type, model, input_schema):
        if content_type is None:
            return scoring_server.InvocationsResponse(
                response="Content-Type: the header is missing; send the body as application/json",
                status=415,
                mimetype="text/plain",
            )
        return original(data, content_type, model, input_schema)

    return invocations


def _parse_json_data(original: Callable, limits: Limits) -> Callable:
    def parse_json_data(data, metadata, input_schema):
        body = decode_json_object(data, limits.max_depth)
        check_array_sizes(body, limits)
        try:
            # MLflow decodes only what is not a dict yet, so it parses nothing twice.
            return original(body, metadata, input_schema)
        except MlflowException as error:
            envelopes = [key for key in _ENVELOPES if key in body]
            field = envelopes[0] if len(envelopes) == 1 else "body"
            raise RequestError(field, _bounded(error.message)) from None

    return parse_json_data


def decode_json_object(data: bytes | str, max_depth: int) -> dict:
    """The request body as a dict, or a RequestError naming ``body`` (or the too-deep path)."""
    try:
        body = json.loads(data, parse_int=_parse_int)
    except UnicodeDecodeError as error:  # json.loads decodes bytes first; not a JSONDecodeError
        raise RequestError("body", f"is not valid JSON: not UTF-8 text ({error.reason} at byte {error.start})") \
            from None
    except json.JSONDecodeError as error:
        raise RequestError("body", f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") \
            from None
    except RecursionError:
        raise RequestError("body", f"nests too deeply to parse; the limit is {max_depth} levels") from None
    if not isinstance(body, dict):
        raise RequestError("body", f"must be a JSON object (see the model's request shapes), got {type(body).__name__}")
    _check_depth(body, max_depth)
    return body


def check_array_sizes(body: dict, limits: Limits) -> None:
    """Refuse an ``inputs`` / ``instances`` value whose numpy array would hold more characters than
    ``max_items`` texts of ``max_chars`` each, the most any served model takes in one request."""
    budget = limits.max_items * limits.max_chars
    for envelope in ("inputs", "instances"):
        value = body.get(envelope)
        named = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in named:
            cells, longest = _extent(item)
            if cells * longest > budget:
                field = envelope if key is None else f"{envelope}.{clip_name(key, 50)}"
                raise RequestError(field, f"MLflow's {envelope} envelope would make this a numpy array of {cells} "
                                          f"cells of {longest} characters, more than the {limits.max_items} x "
                                          f"{limits.max_chars} characters a request may hold; send the body "
                                          "under input, or shorten it")


def _extent(value) -> tuple[int, int]:
    """(cells, longest string) of the array numpy would build from `value`, counted without building it."""
    cells, longest, stack = 0, 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        cells += 1
        if isinstance(item, str):
            longest = max(longest, len(item))
    return cells, longest


def _parse_int(digits: str) -> int | float:
    # Python refuses to convert longer literals (quadratic cost); a JSON number beyond range is infinite anyway.
    limit = sys.get_int_max_str_digits()
    if limit and len(digits.lstrip("-")) > limit:
        return float("-inf") if digits.startswith("-") else float("inf")
    return int(digits)


def _check_depth(body: dict, max_depth: int) -> None:
    """Iteratively, so that the check itself cannot exceed the recursion limit it protects downstream code from."""
    stack: list[tuple[object, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            raise RequestError(path[:200], f"nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{clip_name(k, 50)}" if path else clip_name(k, 50), depth + 1)
                         for k, v in value.items() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value) if isinstance(v, dict | list))


def _bounded(message: str, limit: int = 500) -> str:
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message)} characters)"
