"""Malformed requests to the real Ruri embeddings and rerank servers, generated with Hypothesis (tests/support/fuzz.py):
never a 5xx or a hang, /ping healthy afterwards, and every 4xx names the field (or says the body is not JSON)."""

from __future__ import annotations

import pytest

from serving.embeddings.requests import FIELDS as EMBED_FIELDS
from serving.rerank.requests import FIELDS as RERANK_FIELDS
from tests.support import fuzz

pytestmark = pytest.mark.slow

EMBED_BODY = {"input": ["猫はかわいい動物です。", "東京は日本の首都です。"], "input_type": "document", "dimensions": 8}
RERANK_BODY = {"query": "日本の首都", "documents": ["東京は日本の首都です。", {"text": "猫はかわいい"}], "top_n": 1}

SHAPES = {
    "embed": [
        fuzz.Shape("embed input", EMBED_BODY, EMBED_FIELDS),
        fuzz.Shape("embed inputs", EMBED_BODY, EMBED_FIELDS, wrap=lambda body: {"inputs": body}, envelope="inputs"),
    ],
    # A rerank body may itself hold its fields inside "input" (serving.rerank.requests), so adding one changes its shape.
    "rerank": [
        fuzz.Shape("rerank input", RERANK_BODY, RERANK_FIELDS, wrap=lambda body: {"input": body},
                   selectors=frozenset({"input"})),
        fuzz.Shape("rerank inputs", RERANK_BODY, RERANK_FIELDS, wrap=lambda body: {"inputs": body},
                   envelope="inputs", selectors=frozenset({"input"})),
    ],
}
# Sized so that the four runs take about 30 s together on a 2-core machine (measured: 200 field cases 11-12 s,
# 250 raw ones 2.5 s, per model).
FIELD_EXAMPLES = 200
RAW_EXAMPLES = 250


@pytest.mark.parametrize("model", ["embed", "rerank"])
def test_malformed_fields_are_refused_naming_them(servers, model, record_property):
    outcomes = fuzz.run(getattr(servers, model), fuzz.field_cases(SHAPES[model]), FIELD_EXAMPLES, record_property)
    assert outcomes["4xx"] > FIELD_EXAMPLES / 2, outcomes


@pytest.mark.parametrize("model", ["embed", "rerank"])
def test_bodies_that_are_not_json_objects_are_refused(servers, model, record_property):
    outcomes = fuzz.run(getattr(servers, model), fuzz.raw_cases(SHAPES[model]), RAW_EXAMPLES, record_property)
    assert outcomes["4xx"] == RAW_EXAMPLES, outcomes


@pytest.mark.parametrize(("body", "content_type", "status", "says"), fuzz.mlflow_500s(EMBED_BODY, "dimensions"))
def test_what_mlflow_itself_answered_with_500_is_refused_with_4xx(servers, body, content_type, status, says):
    response = fuzz.post(servers.embed, body, content_type)

    assert response.status_code == status, response.text[:500]
    assert says in response.text


def test_a_megabytes_long_body_that_is_not_json_is_not_echoed_back(servers):
    # MLflow's own refusal quoted the whole body.
    response = fuzz.post(servers.embed, b"x" * 5_000_000, "application/json")

    assert response.status_code == 400
    assert response.json()["message"] == "body: is not valid JSON: Expecting value at line 1 column 1"
