"""The embeddings pyfunc behind a real `mlflow models serve`: OpenAI shape, Ruri prefixes, truncation,
encodings, limits and errors."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from serving.ruri.register import RURI_V3_PROMPTS
from tests.serving.helpers import MAX_SEQ_LENGTH, assert_bad_request, invoke

TEXTS = ["猫はかわいい動物です。", "東京は日本の首都です。", "明日の天気は雨"]
LONG_TEXT = "富士山は日本で一番高い山です。京都には古い寺がたくさんあります。" * 3


def embed(servers, body) -> list[np.ndarray]:
    response = invoke(servers.embed, body)
    assert response.status_code == 200, response.text
    return [np.asarray(item["embedding"], dtype=np.float32) for item in response.json()["data"]]


@pytest.fixture(scope="module")
def reference(tiny_bi_encoder_dir):
    """The same model in this process, through sentence-transformers' own encode."""
    model = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu", local_files_only=True)

    def encode(texts, prompt=""):
        return model.encode(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True)

    return encode


def test_response_has_the_openai_shape_and_normalised_vectors(servers):
    response = invoke(servers.embed, {"input": TEXTS, "model": "anything", "user": "u1"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "ruri-embed"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert {item["object"] for item in body["data"]} == {"embedding"}
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_a_single_string_gives_one_embedding(servers):
    assert len(embed(servers, {"input": "猫"})) == 1


def test_vectors_match_sentence_transformers_encode(servers, reference):
    served = np.stack(embed(servers, {"input": TEXTS}))
    np.testing.assert_allclose(served, reference(TEXTS), atol=1e-5)


@pytest.mark.parametrize("input_type", sorted(RURI_V3_PROMPTS))
def test_each_input_type_prepends_its_ruri_prefix(servers, input_type):
    prefix = RURI_V3_PROMPTS[input_type]
    typed = embed(servers, {"input": TEXTS, "input_type": input_type})
    by_hand = embed(servers, {"input": [prefix + t for t in TEXTS]})
    np.testing.assert_allclose(typed, by_hand, atol=1e-6)


def test_a_text_that_already_has_its_prefix_is_not_prefixed_again(servers):
    once = invoke(servers.embed, {"input": ["検索クエリ: 猫"], "input_type": "query"}).json()
    bare = invoke(servers.embed, {"input": ["猫"], "input_type": "query"}).json()

    assert once["data"][0]["embedding"] == bare["data"][0]["embedding"]
    assert once["usage"] == bare["usage"]


def test_long_text_is_truncated_from_the_tail_keeping_the_prefix(servers, reference):
    response = invoke(servers.embed, {"input": [LONG_TEXT], "input_type": "query"}).json()

    assert response["usage"]["prompt_tokens"] == MAX_SEQ_LENGTH
    # sentence-transformers truncates prompt + text on the right, so the prompt survives
    expected = reference([LONG_TEXT], prompt=RURI_V3_PROMPTS["query"])[0]
    np.testing.assert_allclose(response["data"][0]["embedding"], expected, atol=1e-5)
    as_document = embed(servers, {"input": [LONG_TEXT], "input_type": "document"})[0]
    assert not np.allclose(as_document, expected, atol=1e-3)


def test_usage_counts_the_tokens_the_model_ran(servers, tiny_bi_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bi_encoder_dir))
    encoded = tokenizer(["検索文書: " + t for t in TEXTS], truncation=True, max_length=MAX_SEQ_LENGTH)
    expected = sum(map(len, encoded["input_ids"]))

    usage = invoke(servers.embed, {"input": TEXTS, "input_type": "document"}).json()["usage"]

    assert usage == {"prompt_tokens": expected, "total_tokens": expected}


def test_base64_decodes_to_the_float_vectors(servers):
    floats = invoke(servers.embed, {"input": TEXTS}).json()["data"]
    encoded = invoke(servers.embed, {"input": TEXTS, "encoding_format": "base64"}).json()["data"]

    for as_float, as_base64 in zip(floats, encoded, strict=True):
        decoded = np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(as_float["embedding"], dtype=np.float32))


def test_dimensions_truncates_and_renormalises(servers):
    full = embed(servers, {"input": TEXTS})
    short = embed(servers, {"input": TEXTS, "dimensions": 8})

    for f, s in zip(full, short, strict=True):
        assert s.shape == (8,)
        np.testing.assert_allclose(s, f[:8] / np.linalg.norm(f[:8]), atol=1e-6)


def test_apply_ruri_prefix_treats_a_string_as_a_query_and_a_list_as_documents(servers):
    single = embed(servers, {"input": "猫", "apply_ruri_prefix": True})
    many = embed(servers, {"input": ["猫"], "apply_ruri_prefix": True})

    np.testing.assert_allclose(single, embed(servers, {"input": "猫", "input_type": "query"}), atol=1e-6)
    np.testing.assert_allclose(many, embed(servers, {"input": ["猫"], "input_type": "document"}), atol=1e-6)


def test_instruction_is_a_custom_prefix(servers):
    custom = embed(servers, {"input": ["猫"], "instruction": "分類: "})
    np.testing.assert_allclose(custom, embed(servers, {"input": ["分類: 猫"]}), atol=1e-6)


def test_the_inputs_envelope_answers_inside_predictions(servers):
    direct = invoke(servers.embed, {"input": TEXTS, "dimensions": 4}).json()
    wrapped = invoke(servers.embed, {"inputs": {"input": TEXTS, "dimensions": 4}})

    assert wrapped.status_code == 200, wrapped.text
    assert wrapped.json() == {"predictions": direct}


def test_concurrent_requests_each_get_their_own_vectors(servers):
    texts = [f"{t}{i}" for i in range(8) for t in TEXTS[:2]]
    alone = {t: embed(servers, {"input": [t]})[0] for t in texts}

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: embed(servers, {"input": [t]})[0], texts))

    for text, vector in zip(texts, together, strict=True):
        np.testing.assert_allclose(vector, alone[text], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": ""}, "input"),
        ({"input": ["猫", "  "]}, "input[1]"),
        ({"input": ["猫", 3]}, "input[1]"),
        ({"input": []}, "input"),
        ({"input": {"text": "猫"}}, "input"),
        ({"input": ["猫"] * 17}, "input"),
        ({"input": "猫" * 2001}, "input"),
        ({"input": [LONG_TEXT] * 13}, "input"),  # 13 x 16 tokens > 200
        ({"input": "猫", "dimensions": 0}, "dimensions"),
        ({"input": "猫", "dimensions": 33}, "dimensions"),
        ({"input": "猫", "dimensions": "8"}, "dimensions"),
        ({"input": "猫", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "猫", "input_type": "poem"}, "input_type"),
        ({"input": "猫", "input_tpye": "query"}, "input_tpye"),
        ({"input": "猫", "input_type": "query", "instruction": "分類: "}, "instruction"),
        ({"input": "猫", "input_type": "query", "apply_ruri_prefix": False}, "apply_ruri_prefix"),
        ({"input": "猫", "instruction": "長い指示" * 10}, "instruction"),  # longer than the model's 16 tokens
        ({"input": "猫", "model": 7}, "model"),
    ],
)
def test_bad_requests_get_400_naming_the_field(servers, body, field):
    assert_bad_request(invoke(servers.embed, body), field)


def test_error_for_a_huge_request_does_not_echo_it(servers):
    response = invoke(servers.embed, {"input": ["猫" * 1000] * 5000})

    message = assert_bad_request(response, "input")
    assert "5000 items" in message
    assert len(response.content) < 2000
