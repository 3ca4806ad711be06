"""The rerank pyfunc behind a real `mlflow models serve`: both envelopes, the Cohere/Jina response,
top_n / top_k, return_documents, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from tests.serving.helpers import assert_bad_request, invoke

QUERY = "日本の首都はどこですか"
DOCUMENTS = ["猫はかわいい動物です。", "東京は日本の首都です。", "明日の天気は雨でしょう。", "富士山は高い山です。"]


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder_dir) -> CrossEncoder:
    return CrossEncoder(str(tiny_cross_encoder_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def expected_scores(cross_encoder) -> np.ndarray:
    return cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])


def rerank(servers, body, envelope="input"):
    response = invoke(servers.rerank, {envelope: body})
    assert response.status_code == 200, response.text
    return response.json()


def test_results_are_all_documents_best_first_with_the_cross_encoder_scores(servers, expected_scores):
    answer = rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "model": "anything"})

    assert set(answer) == {"model", "results", "usage"}
    assert answer["model"] == "ruri-rerank"
    results = answer["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert set(r) == {"index", "relevance_score"}
        assert r["relevance_score"] == pytest.approx(float(expected_scores[r["index"]]), abs=1e-5)
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] > 0


def test_the_inputs_envelope_answers_the_same_inside_predictions(servers):
    body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True}

    wrapped = rerank(servers, body, envelope="inputs")

    assert wrapped == {"predictions": rerank(servers, body)}


def test_top_n_keeps_the_best_results(servers):
    everything = rerank(servers, {"query": QUERY, "documents": DOCUMENTS})["results"]
    best_two = rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})["results"]

    assert best_two == everything[:2]


def test_top_k_is_an_alias_of_top_n(servers):
    by_k = rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "top_k": 3})
    assert by_k == rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "top_n": 3})


def test_top_n_beyond_the_documents_returns_them_all(servers):
    assert len(rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "top_n": 50})["results"]) == 4


def test_return_documents_adds_each_text_and_text_objects_are_accepted(servers):
    documents = [{"text": d} for d in DOCUMENTS[:2]] + DOCUMENTS[2:]

    results = rerank(servers, {"query": QUERY, "documents": documents, "return_documents": True})["results"]

    assert {r["index"]: r["document"] for r in results} == {i: {"text": d} for i, d in enumerate(DOCUMENTS)}


def test_max_tokens_per_doc_scores_the_first_tokens_of_each_document(servers, cross_encoder):
    """Cohere v2's max_tokens_per_doc: the score is the model's score of the document's first n tokens (as its own
    tokenizer splits it); the whole document comes back."""
    heads = []
    for document in DOCUMENTS:
        encoded = cross_encoder.tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
        heads.append(document[:encoded["offset_mapping"][2][1]] if len(encoded["input_ids"]) > 3 else document)
    assert heads != DOCUMENTS
    expected = cross_encoder.predict([(QUERY, head) for head in heads])

    answer = rerank(servers, {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 3,
                              "return_documents": True})

    for r in answer["results"]:
        assert r["relevance_score"] == pytest.approx(float(expected[r["index"]]), abs=1e-5)
        assert r["document"]["text"] == DOCUMENTS[r["index"]]
    whole = rerank(servers, {"query": QUERY, "documents": DOCUMENTS})
    assert answer["usage"]["prompt_tokens"] < whole["usage"]["prompt_tokens"]


def test_a_bare_cohere_body_is_refused_by_mlflow_itself(servers):
    response = invoke(servers.rerank, {"query": QUERY, "documents": DOCUMENTS})

    assert response.status_code == 400
    assert "inputs" in response.json()["message"]


@pytest.mark.parametrize("envelope", ["input", "inputs"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["猫", ""]}, "documents[1]"),
        ({"query": QUERY, "documents": [{"text": ""}]}, "documents[0].text"),
        ({"query": QUERY, "documents": [{"text": "猫", "title": "t"}]}, "documents[0]"),
        ({"query": "", "documents": DOCUMENTS}, "query"),
        ({"documents": DOCUMENTS}, "query"),
        ({"query": QUERY}, "documents"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_k": -1}, "top_k"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 1, "top_k": 2}, "top_k"),
        ({"query": QUERY, "documents": DOCUMENTS, "return_documents": "yes"}, "return_documents"),
        ({"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ({"query": QUERY, "documents": ["猫"] * 17}, "documents"),
        ({"query": QUERY, "documents": ["猫" * 2001]}, "documents[0]"),
        ({"query": QUERY, "documents": ["猫はかわいい動物で、よく眠ります。" * 5] * 8}, "documents"),  # > 200 tokens
        ({"query": QUERY, "documents": DOCUMENTS, "rank_fields": ["text"]}, "rank_fields"),
    ],
)
def test_bad_requests_get_400_naming_the_field(servers, envelope, body, field):
    assert_bad_request(invoke(servers.rerank, {envelope: body}), field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": ["猫", 5]}, "documents[1]"),  # the inputs envelope turns 5 into "5"
        ({"input": {"query": QUERY, "documents": DOCUMENTS}, "top_n": 1}, "top_n"),
        ({"input": "猫"}, "input"),
    ],
)
def test_bad_requests_in_the_input_envelope(servers, body, field):
    wrapped = body if "input" in body else {"input": body}
    assert_bad_request(invoke(servers.rerank, wrapped), field)
