"""Malformed requests for the served models (Hypothesis strategies) and the properties every answer must have.

A `Shape` is one request shape a model accepts: a valid body and how errors name its fields. Two strategies
build requests from the shapes:

  * `field_cases`: a valid body with 1-3 mutations (a field set to a wrong type, a huge string or list, NaN or
    Infinity, a lone surrogate, an integer of 5000 digits, nesting 8 to 100000 levels deep, a field deleted, an
    unknown (or 100000-character) field added, a list item replaced or appended); the 4xx must name a field
    that was mutated, a field inside it or the list holding it.
  * `raw_cases`: bytes that are not a JSON object (invalid UTF-8 spliced in, cut short, random text or bytes,
    empty), or a body sent with a wrong Content-Type; a non-JSON body's 4xx must say it is not valid JSON.

`check` sends one case to a real `mlflow models serve` and asserts the properties: never 5xx, an answer within
`TIMEOUT` seconds, /ping still 200 afterwards, and a 4xx of at most `MAX_REFUSAL_BYTES` that names the field (or
says what is wrong with the body or its content type). Values Python's JSON encoder cannot write (NaN as text,
huge integers, deep nesting) travel as `Raw` JSON text spliced into the serialised body.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Python's json parser recurses per level and stops near sys.getrecursionlimit() (1000) minus the frames
# already in use; Hypothesis raises the limit while a test runs, so the boundary is judged from the text.
PARSER_DEPTH = 500
TIMEOUT = 30.0  # seconds per request: a hang fails the case instead of the whole run
MAX_REFUSAL_BYTES = 20_000  # a refusal must not echo a huge request back

# Derandomised, no example database: every run (CI included) sends the same cases; each test sets how many.
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

Path = tuple  # keys and list indices from the model body's root

# Keys by which MLflow's scoring server decides how to parse a body (LLM-style or an envelope).
SELECTORS = frozenset({"input", "inputs", "messages", "prompt", "instances", "dataframe_split", "dataframe_records"})


@dataclass(frozen=True)
class Raw:
    """JSON text to splice into a body as is (NaN, 1e400, a 5000-digit integer, 100000 nested brackets)."""

    text: str


@dataclass(frozen=True)
class Shape:
    """One request shape: `body` is what the model validates, `wrap` puts it in its envelope (None: none)."""

    name: str
    body: object
    fields: Sequence[str] = ()  # the model's field names at the body's root, to set when absent
    wrap: Callable[[object], dict] | None = None
    prefix: str = ""  # the name the model's errors give the body's root ("input" for generation's old handler)
    envelope: str | None = None  # the envelope key MLflow's own parsing errors are blamed on
    # The names an error about a path of the (mutated) body may use; None: the path itself.
    blame: Callable[[Path, object], set[str]] | None = None
    selectors: frozenset[str] = frozenset()  # keys that change how the model itself reads the body

    @property
    def root(self) -> str:
        """The body's path in the request, as the server's own checks (nesting depth) name it."""
        if self.wrap is None:
            return ""
        marker = object()
        return next(key for key, value in self.wrap(marker).items() if value is marker)

    def selects(self, key) -> bool:
        return key in self.selectors or (self.wrap is None and key in SELECTORS)


@dataclass(frozen=True)
class Case:
    """One request and the field names its 4xx may name (`None`: judge the body, not a field)."""

    shape: str
    description: str
    body: bytes
    content_type: str | None = "application/json"
    blame: frozenset[str] | None = None


# ---------------------------------------------------------------------------------------------- values

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
_JUNK = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_SPECIAL = st.sampled_from([
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e400"), Raw("9" * 5000),
    Raw("-" + "9" * 5000), Raw("0.5e-400"), "\ud800", "猫\udfff", "\x00", "", "   ", "\u3000\n", 2**63, 2**64, -1, 0,
    1.5, True, [], {}, [[]], {"text": None},
]).map(copy.deepcopy)  # later mutations change containers in place: never the shared constant
_HUGE_TEXT = st.builds(lambda n, c: c * n, st.sampled_from([2_001, 50_001, 1_000_000]), st.sampled_from("x猫 "))
# Distinct items: a later mutation of one item must not change all of them (a 1 MB string times 100000).
_HUGE_LIST = st.builds(lambda n, item: [copy.copy(item) for _ in range(n)], st.sampled_from([17, 2_049, 100_000]),
                       st.sampled_from(["猫", 1, None, {"text": "猫"}]))
_DEEP = st.builds(
    lambda depth, kind: Raw({"list": "[" * depth + "]" * depth,
                             "object": '{"a":' * depth + "1" + "}" * depth,
                             "mixed": '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)}[kind]),
    st.sampled_from([8, 33, 200, 999, 1_500, 100_000]), st.sampled_from(["list", "object", "mixed"]),
)
BAD_VALUES = st.one_of(_JUNK, _SPECIAL, _HUGE_TEXT, _HUGE_LIST, _DEEP)
_NAMES = st.one_of(st.text(max_size=10), st.sampled_from([
    "inputs", "input", "messages", "prompt", "params", "max_token", "frequency_penalty", "input_tpye", "top_k",
    "stream", "rank_fields", "__proto__", "x" * 300, "鍵" * 100_000,
]))


# ---------------------------------------------------------------------------------------------- encoding


def encode(value) -> bytes:
    """JSON bytes with every `Raw` spliced in; lone surrogates go out as UTF-8-encoded surrogates, which
    Python's json (surrogatepass) reads back as the same string."""
    tokens: dict[str, str] = {}

    def swap(v):
        if isinstance(v, Raw):
            token = f"__raw_{uuid.uuid4().hex}__"
            tokens[json.dumps(token)] = v.text
            return token
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value), ensure_ascii=False)
    for token, raw in tokens.items():
        text = text.replace(token, raw, 1)
    return text.encode("utf-8", "surrogatepass")


def path_name(path: Path, prefix: str = "") -> str:
    name = prefix
    for key in path:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else str(key))
    return name


def _paths(value, path: Path = ()) -> list[Path]:
    """Every value's path in a (small) valid body, containers and leaves alike."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _get(value, path: Path):
    for key in path:
        value = value[key]
    return value


# ---------------------------------------------------------------------------------------------- strategies


@st.composite
def _mutation(draw, shape: Shape, body):
    """Mutates `body` in place; returns (description, the path to blame, whether the request's shape changed:
    a key by which MLflow or the model picks how to read a body was added or deleted)."""
    existing = _paths(body)
    containers = [()] + [p for p in existing if isinstance(_get(body, p), dict | list)]
    kind = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if kind == "replace" and existing:
        path = draw(st.sampled_from(existing))
        value = draw(BAD_VALUES)
        _get(body, path[:-1])[path[-1]] = value
        return f"{_clip(path_name(path))} = {_describe(value)}", path, False
    target = draw(st.sampled_from(containers))
    node = _get(body, target)
    if kind == "delete" and node:
        key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        del node[key]
        # Deleting an item shifts the items after it: blame the whole list.
        path = target if isinstance(node, list) else (*target, key)
        return f"delete {_clip(path_name((*target, key)))}", path, target == () and shape.selects(key)
    if isinstance(node, list):
        node.append(draw(BAD_VALUES))
        where = _clip(path_name(target)) or "the body"
        return f"append {_describe(node[-1])} to {where}", (*target, len(node) - 1), False
    absent = [f for f in shape.fields if f not in node] if target == () else []
    key = draw(st.sampled_from(absent) | _NAMES if absent else _NAMES)
    node[key] = draw(BAD_VALUES)
    description = f"set {_clip(path_name((*target, key)))} = {_describe(node[key])}"
    return description, (*target, key), target == () and shape.selects(key)


def _describe(value) -> str:
    return _clip(value.text if isinstance(value, Raw) else repr(value))


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@st.composite
def field_cases(draw, shapes: Sequence[Shape]) -> Case:
    shape = draw(st.sampled_from(shapes))
    body = json.loads(json.dumps(shape.body))  # a fresh copy to mutate
    described, blamed = [], set()
    shape_changed = False
    for _ in range(draw(st.integers(1, 3))):
        description, path, changed = draw(_mutation(shape, body))
        described.append(description)
        shape_changed |= changed
        blamed.add(path_name(path, shape.root))
        blamed |= shape.blame(path, body) if shape.blame else {path_name(path, shape.prefix)}
    wrapped = shape.wrap(body) if shape.wrap else body
    if shape_changed:
        # Another shape now applies (or none): any field it names must at least be one that was sent.
        blamed |= {"body", "request", *map(str, wrapped)}
        if isinstance(body, dict):
            blamed |= {path_name((k,), shape.prefix) for k in body}
    if shape.envelope:
        blamed.add(shape.envelope)
    body = encode(wrapped)
    if nesting(body) > PARSER_DEPTH:
        blamed.add("body")  # about as deep as Python's parser goes: no field can be named, the body is refused whole
    return Case(shape.name, "; ".join(described), body, blame=frozenset(blamed))


_INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xe3\x81", b"\xf0\x28\x8c\xbc", b"\xc0\xaf", b"\x80", b"\xf8\x88"]
BAD_CONTENT_TYPES = [
    None, "", "text/plain", "application/json; charset=latin-1", "application/json; foo=bar", "application/json;",
    "text/csv", "application/x-www-form-urlencoded", "application/vnd.apache.parquet", "multipart/form-data",
]


@st.composite
def raw_cases(draw, shapes: Sequence[Shape]) -> Case:
    shape = draw(st.sampled_from(shapes))
    body = encode(shape.wrap(shape.body) if shape.wrap else shape.body)
    kind = draw(st.sampled_from(["invalid-utf8", "cut", "text", "bytes", "empty", "content-type"]))
    if kind == "invalid-utf8":
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from(_INVALID_UTF8))
        return Case(shape.name, f"{bad!r} at byte {at}", body[:at] + bad + body[at:], blame=None)
    if kind == "cut":
        at = draw(st.integers(1, len(body) - 1))
        return Case(shape.name, f"cut at byte {at} of {len(body)}", body[:at], blame=None)
    if kind == "text":
        text = draw(st.text(max_size=200))
        return Case(shape.name, f"text {text[:40]!r}", text.encode("utf-8", "surrogatepass"), blame=None)
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
        return Case(shape.name, f"bytes {data[:40]!r}", data, blame=None)
    if kind == "empty":
        return Case(shape.name, "empty body", b"", blame=None)
    content_type = draw(st.sampled_from(BAD_CONTENT_TYPES))
    return Case(shape.name, f"Content-Type {content_type!r}", body, content_type=content_type, blame=None)


def mlflow_500s(body: dict, integer_field: str) -> list:
    """Requests (around a valid `body`) that MLflow 3.17's scoring server itself answered with HTTP 500, before
    any model code ran, and what the refusal says now (serving/base/scoring_guard.py): pytest params of
    (body, content type, status, text of the answer)."""
    valid = encode(body)
    return [
        pytest.param(valid, None, 415, "Content-Type: the header is missing", id="no-content-type"),
        pytest.param(encode({**body, "x": Raw("[" * 100_000 + "]" * 100_000)}), "application/json", 400,
                     "body: nests too deeply to parse", id="nested-100000-deep"),
        pytest.param(encode({**body, integer_field: Raw("9" * 5000)}), "application/json", 400,
                     f"{integer_field}: must be an integer, got float", id="integer-of-5000-digits"),
    ]


# ---------------------------------------------------------------------------------------------- properties


def post(url: str, body: bytes, content_type: str | None) -> requests.Response:
    """POST `body` to the server's /invocations, with no Content-Type header at all when `content_type` is None."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    return requests.post(f"{url}/invocations", data=body, headers=headers, timeout=TIMEOUT)


def check(url: str, case: Case, outcomes: Counter) -> None:
    """Send `case` to the server at `url` and assert the properties; counts the outcome in `outcomes`."""
    where = f"[{case.shape}] {case.description}"
    try:
        response = post(url, case.body, case.content_type)
    except requests.Timeout:
        raise AssertionError(f"{where}: no answer within {TIMEOUT:.0f} s") from None
    outcomes[f"{response.status_code // 100}xx"] += 1
    assert response.status_code < 500, f"{where}: HTTP {response.status_code} {response.text[:500]}"
    assert requests.get(f"{url}/ping", timeout=TIMEOUT).status_code == 200, f"{where}: /ping fails afterwards"
    if response.status_code >= 400:
        assert len(response.content) <= MAX_REFUSAL_BYTES, f"{where}: a {len(response.content)}-byte refusal"
        _check_refusal(case, response, where)


def _check_refusal(case: Case, response: requests.Response, where: str) -> None:
    if response.status_code == 415:
        text = response.text.lower()
        assert case.content_type != "application/json", f"{where}: {response.text}"
        assert "content type" in text or "content-type" in text or "utf-8" in text, f"{where}: {response.text}"
        return
    assert response.status_code == 400, f"{where}: HTTP {response.status_code} {response.text[:500]}"
    message = response.json()["message"]
    # A refusal from predict comes as "Failed to predict data '<request>'. \nError: <ours>".
    ours = message.rsplit("\nError: ", 1)[-1]
    # Field names are the client's keys and may hold ": " themselves: every "name: " the message opens with.
    prefixes = [ours[:i] for i in _find_all(ours, ": ")[:8]]
    named = prefixes[0] if prefixes else ours
    if case.content_type in ("text/csv", "application/vnd.apache.parquet"):
        # MLflow parses these into a DataFrame; the model names its first column problem, or MLflow says the
        # body is not CSV / parquet.
        assert ": " in ours and (named in {"request", "prompt"} or named.startswith("prompt[")
                                 or "CSV" in message or "Parquet" in message), f"{where}: {message[:500]}"
        return
    if case.blame is None:
        expected = _judge_body(case.body)
        assert named == "body" and expected in ours, f"{where}: expected 'body: ...{expected}...', got {ours[:500]}"
        return
    assert any(_names(name, blamed) for name in prefixes for blamed in case.blame), (
        f"{where}: the error names {named!r}, none of the mutated fields {sorted(case.blame)}: {ours[:500]}"
    )


def nesting(body: bytes) -> int:
    """How deep the JSON text nests (brackets inside strings do not count)."""
    outside_strings = re.sub(rb'"(?:\\.|[^"\\])*"', b"", body)
    steps = np.zeros(256, dtype=np.int64)
    steps[list(b"[{")], steps[list(b"]}")] = 1, -1
    return int(np.cumsum(steps[np.frombuffer(outside_strings, dtype=np.uint8)]).max(initial=0))


def _judge_body(body: bytes) -> str:
    """What the refusal of a body that is not a valid request must say."""
    try:
        value = json.loads(body)
    except RecursionError:
        return "nests too deeply"
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return "is not valid JSON"
    return "must be a JSON object" if not isinstance(value, dict) else ""


def _find_all(text: str, sub: str) -> list[int]:
    found, at = [], text.find(sub)
    while at >= 0:
        found.append(at)
        at = text.find(sub, at + 1)
    return found


def _names(named: str, blamed: str) -> bool:
    """The error's field is the blamed field, inside it, or a container of it (a limit on a whole list); a
    name with "..." holds a long key the server clipped."""
    if "..." in named and blamed.startswith(named.split("...", 1)[0]):
        return True
    return any(a == b or a.startswith((b + "[", b + ".")) for a, b in ((named, blamed), (blamed, named)))


# ---------------------------------------------------------------------------------------------- running


def run(url: str, cases: st.SearchStrategy[Case], max_examples: int, record_property) -> Counter:
    """Check `max_examples` cases against the server at `url`; records and returns how the server answered."""
    outcomes: Counter = Counter()

    @settings(SETTINGS, max_examples=max_examples)
    @given(cases)
    def one(case: Case) -> None:
        check(url, case, outcomes)

    one()
    record_property("fuzz_cases", sum(outcomes.values()))
    record_property("fuzz_outcomes", dict(sorted(outcomes.items())))
    return outcomes


def summarize(terminalreporter) -> None:
    """Print each fuzz test's case count at the end of the run (for `pytest_terminal_summary` in a conftest)."""
    if getattr(terminalreporter, "_fuzz_summarized", False):  # both serving conftests call this
        return
    terminalreporter._fuzz_summarized = True
    runs = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            properties = dict(getattr(report, "user_properties", ()))
            if getattr(report, "when", None) == "call" and "fuzz_cases" in properties:
                runs.append((report.nodeid, properties["fuzz_cases"], properties["fuzz_outcomes"]))
    if runs:
        terminalreporter.write_sep("-", f"fuzz: {sum(count for _, count, _ in runs)} malformed requests")
        for nodeid, count, outcomes in sorted(runs):
            terminalreporter.write_line(f"{nodeid}: {count} cases, answered {outcomes}")
