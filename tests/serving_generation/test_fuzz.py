"""Malformed requests to the real NeuroQ generation server, generated with Hypothesis (tests/support/fuzz.py), for
every request shape it accepts: never a 5xx or a hang, /ping healthy afterwards, and every 4xx names the field
(or says the body is not JSON)."""

from __future__ import annotations

import json

import pytest

from serving.generation.legacy import LEGACY_GENERATE_FIELDS, TRAINING_FIELDS
from serving.generation.requests import CHAT_FIELDS, COMPLETION_FIELDS
from tests.support import fuzz

pytestmark = pytest.mark.slow

PROMPT = "こんにちは"


def _row_names(records, path) -> set[str]:
    """Every key and value of the record at `path`: pandas builds a DataFrame's columns from a record's keys,
    or, when a record is not an object, from its values."""
    if not path or path[0] >= len(records):
        return set()
    row = fuzz.encode(records[path[0]])
    if fuzz.nesting(row) > fuzz.PARSER_DEPTH:
        return set()  # the server refuses the body whole
    names, stack = set(), [json.loads(row, parse_int=str)]  # names only: no 5000-digit int conversion
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            names |= set(value)
            stack += value.values()
        elif isinstance(value, list):
            stack += value
        else:
            names.add(str(value))
    return names


# One new token keeps a request that happens to be valid cheap; a mutated max_tokens may still ask for more.
SHAPES = [
    fuzz.Shape("completion", {"prompt": [PROMPT, "猫"], "max_tokens": 1, "temperature": 0.5}, COMPLETION_FIELDS),
    fuzz.Shape("chat", {"messages": [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": PROMPT}],
                        "max_tokens": 1, "stop": ["\n"]}, CHAT_FIELDS),
    fuzz.Shape("legacy generate", {"action": "generate", "prompt": PROMPT, "max_length": 1, "session_id": "fuzz-1"},
               (*LEGACY_GENERATE_FIELDS, *TRAINING_FIELDS), wrap=lambda body: {"input": body}, prefix="input"),
    fuzz.Shape("legacy status", {"action": "status"}, ("action", "session_id"), wrap=lambda body: {"input": body},
               prefix="input"),
    fuzz.Shape("legacy clear_session", {"action": "clear_session", "session_id": "fuzz-2"}, ("action", "session_id"),
               wrap=lambda body: {"input": body}, prefix="input"),
    fuzz.Shape("batch inputs", [PROMPT, "猫"], wrap=lambda body: {"inputs": body}, prefix="inputs", envelope="inputs"),
    # A DataFrame's errors name its columns: the mutated one, those a mutated record brings, or "prompt" when
    # the records no longer make a prompt column.
    fuzz.Shape("batch dataframe_records", [{"prompt": PROMPT, "max_tokens": 1}],
               wrap=lambda body: {"dataframe_records": body}, envelope="dataframe_records",
               blame=lambda path, body: {"prompt", *map(str, path[1:2]), *_row_names(body, path[:1])}),
]


# Sized so that the two runs take about 20 s together on a 2-core machine (measured: 250 field cases 18-22 s,
# 250 raw ones 2.5 s).
FIELD_EXAMPLES = 200
RAW_EXAMPLES = 250


def test_generation_refuses_malformed_fields_naming_them(served, record_property):
    outcomes = fuzz.run(served, fuzz.field_cases(SHAPES), FIELD_EXAMPLES, record_property)
    assert outcomes["4xx"] > FIELD_EXAMPLES / 2, outcomes


def test_generation_refuses_bodies_that_are_not_json_objects(served, record_property):
    outcomes = fuzz.run(served, fuzz.raw_cases(SHAPES), RAW_EXAMPLES, record_property)
    assert outcomes["4xx"] == RAW_EXAMPLES, outcomes


@pytest.mark.parametrize(("body", "content_type", "status", "says"), fuzz.mlflow_500s(SHAPES[0].body, "max_tokens"))
def test_what_mlflow_itself_answered_with_500_is_refused_with_4xx(served, body, content_type, status, says):
    response = fuzz.post(served, body, content_type)

    assert response.status_code == status, response.text[:500]
    assert says in response.text
