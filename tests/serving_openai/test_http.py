"""The front over plain HTTP: rerank with the former server's curl body, Jina's body and the Cohere v2 SDK, error
statuses in OpenAI's shape, and a client that hangs up mid-stream."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.serving_openai.conftest import (
    API_KEY,
    MAX_BODY_BYTES,
    MAX_NEW_TOKENS,
    RERANK_SERVED_NAME,
    long_greedy_chat,
)

# The request of the former server's README (../shared/seeds/003), byte for byte what its users send.
SEED_RERANK = {
    "query": "AIの未来について",
    "documents": ["猫について", "人工知能の進化", "日本の首都"],
    "model": RERANK_SERVED_NAME,
    "top_n": 2,
    "return_documents": True,
}


def post(front, path: str, auth, headers=None, **kwargs) -> requests.Response:
    return requests.post(f"{front.url}{path}", headers={**auth, **(headers or {})}, timeout=60, **kwargs)


def assert_error(response: requests.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


def test_the_seed_curl_body_reranks_best_first(front, auth):
    response = post(front, "/v1/rerank", auth, json=SEED_RERANK)
    assert response.status_code == 200, response.text
    answer = response.json()
    results = answer["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(r["document"]["text"] == SEED_RERANK["documents"][r["index"]] for r in results)
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


def test_jina_body_with_document_objects_and_top_k(front, auth):
    body = {"model": "ruri-rerank", "query": SEED_RERANK["query"],
            "documents": [{"text": d} for d in SEED_RERANK["documents"]], "top_k": 3}
    jina = post(front, "/v1/rerank", auth, json=body).json()
    seed = post(front, "/v1/rerank", auth, json={**SEED_RERANK, "top_n": 3}).json()
    assert [(r["index"], r["relevance_score"]) for r in jina["results"]] == \
        [(r["index"], r["relevance_score"]) for r in seed["results"]]
    assert "document" not in jina["results"][0]


def test_cohere_v2_sdk_reranks_through_v2_rerank(front, auth):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key=API_KEY, base_url=front.url)
    answer = client.rerank(model="ruri-rerank", query=SEED_RERANK["query"], documents=SEED_RERANK["documents"],
                           top_n=2)
    expected = post(front, "/v1/rerank", auth, json=SEED_RERANK).json()["results"]
    assert [(r.index, r.relevance_score) for r in answer.results] == \
        [(r["index"], r["relevance_score"]) for r in expected]


def test_cohere_v2_sdk_max_tokens_per_doc_scores_each_document_cut_to_its_first_tokens(front, auth):
    """The model's own parsing applies it (as at /invocations): a document cut to the tokens of its head scores as
    the head alone. How many tokens the head is, the server's usage says: the head cut to 1 token is k - 1 fewer."""
    cohere = pytest.importorskip("cohere")
    query, head, tail = SEED_RERANK["query"], "人工知能の進化", "猫について。日本の首都。"

    def rerank_v1(documents, **extra) -> dict:
        return post(front, "/v1/rerank", auth, json={"query": query, "documents": documents, **extra}).json()

    alone = rerank_v1([head])
    one_token = rerank_v1([head], max_tokens_per_doc=1)
    head_tokens = alone["usage"]["prompt_tokens"] - one_token["usage"]["prompt_tokens"] + 1
    client = cohere.ClientV2(api_key=API_KEY, base_url=front.url)
    cut = client.rerank(model="ruri-rerank", query=query, documents=[head + tail], max_tokens_per_doc=head_tokens)
    whole = client.rerank(model="ruri-rerank", query=query, documents=[head + tail])
    assert cut.results[0].relevance_score == pytest.approx(alone["results"][0]["relevance_score"], abs=1e-6)
    assert cut.results[0].relevance_score != pytest.approx(whole.results[0].relevance_score, abs=1e-6)


def test_rerank_refusals_name_the_field(front, auth):
    assert_error(post(front, "/v1/rerank", auth, json={**SEED_RERANK, "top_n": 0}), 400, "top_n")
    assert_error(post(front, "/v2/rerank", auth, json={"model": "ruri-rerank", "query": "q"}), 400, "documents")
    assert_error(post(front, "/v2/rerank", auth, json={"model": "ruri-rerank", "query": "q", "documents": ["d"],
                                                        "max_tokens_per_doc": 0}), 400, "max_tokens_per_doc")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"{\"input\": \"\xff\"}"])
def test_a_body_that_is_no_json_object_is_unprocessable(front, auth, body):
    response = post(front, "/v1/embeddings", auth, data=body, headers={"Content-Type": "application/json"})
    assert_error(response, 422, "body")


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(front, auth):
    response = post(front, "/v1/embeddings", auth, json={"model": "ruri-embed", "input": "あ" * MAX_BODY_BYTES})
    assert_error(response, 413)


def test_no_key_unknown_routes_and_health(front, auth):
    unauthorised = requests.post(f"{front.url}/v1/rerank", json=SEED_RERANK, timeout=60)
    assert_error(unauthorised, 401)
    assert unauthorised.headers["WWW-Authenticate"] == "Bearer"
    assert_error(post(front, "/v1/images/generations", auth, json={}), 404)
    assert_error(post(front, "/v1/completions", auth, json={"messages": [{"role": "user", "content": "x"}],
                                                            "prompt": "x"}), 400, "messages")
    health = requests.get(f"{front.url}/health", timeout=10).json()  # probes carry no key
    assert health["status"] == "ok"
    assert {m["id"]: m["version"] for m in health["models"]} == {"neuroq": "1", "ruri-embed": "1", "ruri-rerank": "1"}


def test_a_client_that_disconnects_after_the_first_token_stops_its_decoding(front, auth):
    """A greedy answer that runs to max_tokens (seconds of decoding) when nobody hangs up; the client leaves after
    its first piece of text, and the server's decoder stops that row long before max_tokens."""
    body = long_greedy_chat(lambda body: post(front, "/v1/chat/completions", auth, json=body).json())
    with post(front, "/v1/chat/completions", auth, json={**body, "stream": True}, stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(b"data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    # Leaving the block closed the connection: the server notices, closes the model's stream, and the decoder
    # stops the row at its next step.
    deadline = time.monotonic() + 30
    while not (stopped := re.findall(r"stream reader gone: its 1 rows stop decoding after step (\d+)",
                                     front.server.log_tail(20_000))):
        assert time.monotonic() < deadline, front.server.log_tail()
        time.sleep(0.2)
    assert int(stopped[-1]) < MAX_NEW_TOKENS
    assert requests.get(f"{front.url}/health", timeout=10).status_code == 200

