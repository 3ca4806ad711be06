"""Request validation shared by every served model: body -> typed fields, each refusal naming its field.

`RequestError` is an `MlflowException` with INVALID_PARAMETER_VALUE, so `mlflow models serve` answers 400 with
our message, which always starts with the offending field's JSON path (`messages[2].content: ...`). The server
prefixes that message with the whole request (`Failed to predict data '<request>'`), so `shorten_in_place`
shrinks the request object before a `RequestError` leaves `predict`, and every validator checks sizes before
anything expensive (or anything that could raise on a huge value) runs.

How bodies reach `predict` under `mlflow models serve` (mlflow/pyfunc/scoring_server, models logged without a
signature):
  * a top-level `input` (or `messages`, `prompt`) key: the JSON object as is; the answer goes back unwrapped;
  * `{"inputs": {...}}`: the inner object with every value run through `np.array` (lists become arrays,
    scalars 0-d arrays); the answer goes back as `{"predictions": ...}`. `plain()` undoes the numpy step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from serving.base.settings import Limits


class RequestError(MlflowException):
    """A request the model cannot serve; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}", error_code=INVALID_PARAMETER_VALUE)


def plain(value):
    """Undo the `inputs` envelope's numpy conversion (arrays -> lists, numpy scalars -> Python)."""
    if isinstance(value, np.ndarray):
        return plain(value.item()) if value.ndim == 0 else [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def expect_object(value, field: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(field, f"must be a JSON object, got {_type_name(value)}")
    return value


def reject_unknown(body: dict, allowed: Iterable[str], where: str = "request", *, path: str = "") -> None:
    """Refuse the first field not in `allowed`; `path` is the object's own path (`messages[2]`) when nested."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        name = clip_name(unknown[0])
        raise RequestError(f"{path}.{name}" if path else name,
                           f"unknown field in {where} (accepted: {', '.join(sorted(allowed))})")


def clip_name(name, limit: int = 100) -> str:
    """A client's field name as an error names it: a key can be megabytes long, and errors echo their field."""
    name = str(name)
    return name if len(name) <= limit else f"{name[:limit]}..."


def text(value, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, got {_type_name(value)}")
    if len(value) > limits.max_chars:
        raise RequestError(field, f"is {len(value)} characters; the limit is {limits.max_chars}")
    if not value.strip():
        raise RequestError(field, "must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON's "\ud800" escapes decode to lone surrogates; tokenizers refuse them
        raise RequestError(field, f"is not valid Unicode: a lone surrogate {value[error.start]!r} at character "
                                  f"{error.start}") from None
    return value


def text_list(value, field: str, limits: Limits, *, allow_single: bool) -> list[str]:
    """A list of texts (or one text where `allow_single`); the count is checked before any element."""
    if allow_single and isinstance(value, str):
        return [text(value, field, limits)]
    if not isinstance(value, list):
        expected = "a string or a list of strings" if allow_single else "a list"
        raise RequestError(field, f"must be {expected}, got {_type_name(value)}")
    check_count(value, field, limits)
    return [text(v, f"{field}[{i}]", limits) for i, v in enumerate(value)]


def check_count(items: Sequence, field: str, limits: Limits) -> None:
    if not items:
        raise RequestError(field, "must not be empty")
    if len(items) > limits.max_items:
        raise RequestError(field, f"has {len(items)} items; the limit is {limits.max_items}")


def optional_int(body: dict, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    # bool is an int in Python but never what a client means by a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"must be an integer, got {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise RequestError(field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise RequestError(field, f"must be at most {maximum}, got {value}")
    return value


def optional_number(body: dict, field: str, *, minimum: float, maximum: float | None = None,
                    exclusive_minimum: bool = False) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(field, f"must be a number, got {value!r}"[:120])
    low_ok = value > minimum if exclusive_minimum else value >= minimum
    if not low_ok or (maximum is not None and value > maximum):
        low = f"({minimum}" if exclusive_minimum else f"[{minimum}"
        raise RequestError(field, f"must be in {low}, {maximum if maximum is not None else 'inf'}], got {value}")
    return float(value)


def optional_bool(body: dict, field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise RequestError(field, f"must be true or false, got {_type_name(value)}")
    return value


def optional_str(body: dict, field: str, limits: Limits) -> str | None:
    value = body.get(field)
    return None if value is None else text(value, field, limits)


def optional_choice(body: dict, field: str, choices: Iterable[str]) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        raise RequestError(field, f"must be one of {', '.join(map(repr, choices))}, got {_short(value)}")
    return value


def check_total_tokens(n_tokens: int, field: str, limits: Limits) -> None:
    if n_tokens > limits.max_total_tokens:
        raise RequestError(
            field, f"amounts to {n_tokens} tokens after truncation; the limit is {limits.max_total_tokens}"
        )


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _short(value, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def shorten_in_place(body, max_chars: int = 100, max_items: int = 4) -> None:
    """Replace long strings and lists inside `body` with summaries, so the server's error message,
    which embeds the request, stays small.

    `body` is what `predict` received: a dict (whose values the `inputs` envelope made numpy arrays), for
    `{"inputs": [...]}` a numpy array itself, or a DataFrame (`dataframe_split` / `dataframe_records`). An
    array cannot shrink in place: its first `max_items` strings are shortened and the others blanked to "..."
    (numpy prints at most 1000 items anyway). A DataFrame prints clipped cells and at most 60 rows, but its
    column names whole: those are clipped."""
    if isinstance(body, dict):
        for key in list(body):
            value = _shortened(body.pop(key), max_chars, max_items)
            body[clip_name(key, max_chars) if isinstance(key, str) else key] = value
    elif isinstance(body, np.ndarray) and body.dtype.kind in "OU":
        for position, index in enumerate(np.ndindex(body.shape)):
            if position >= max_items:
                body[index] = "..."
            elif isinstance(body[index], str | dict | list):
                body[index] = _shortened(body[index], max_chars, max_items)
    elif isinstance(body, pd.DataFrame):
        body.columns = [clip_name(c, max_chars) if isinstance(c, str) else c for c in body.columns]


def _shortened(value, max_chars: int, max_items: int):
    if isinstance(value, np.ndarray):
        value = plain(value)
    if isinstance(value, dict):
        shorten_in_place(value, max_chars, max_items)
    elif isinstance(value, str) and len(value) > max_chars:
        value = f"{value[:max_chars]}... ({len(value)} characters)"
    elif isinstance(value, list) and len(value) > max_items:
        value = f"<{len(value)} items>"
    elif isinstance(value, list):
        value = [_shortened(v, max_chars, max_items) for v in value]
    return value

