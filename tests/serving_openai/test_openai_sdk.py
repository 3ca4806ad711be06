"""The real, unmodified OpenAI SDK against a real `python -m serving openai` process: embeddings, completions,
chat, chat streaming, models.list(), and the SDK's own exception types for refusals."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tests.serving_openai.conftest import EMBED_SERVED_NAME, MAX_NEW_TOKENS

CHAT = [{"role": "system", "content": "丁寧に答えてください。"}, {"role": "user", "content": "日本の首都はどこですか？"}]


def test_models_list_names_the_registered_models(client):
    assert {model.id for model in client.models.list()} == {"neuroq", "ruri-embed", "ruri-rerank"}
    assert client.models.retrieve("ruri-embed").owned_by == "neuroq"


def test_embeddings_are_normalised_vectors_in_input_order(client):
    response = client.embeddings.create(model="ruri-embed", input=["東京は日本の首都です。", "猫はかわいい。"])
    vectors = np.array([item.embedding for item in response.data])
    assert [item.index for item in response.data] == [0, 1]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_extra_body_input_type_adds_the_ruri_prefix_once(client):
    """The seed's SDK call: extra_body={"input_type": "query"} means "検索クエリ: " before the text, and a text that
    already has it is not prefixed twice. The model is named as the former server's clients name it."""

    def embed(text: str, **extra) -> np.ndarray:
        response = client.embeddings.create(model=EMBED_SERVED_NAME, input=text, **extra)
        return np.array(response.data[0].embedding)

    with_input_type = embed("名古屋大学で開発されたモデルについて教えて。", extra_body={"input_type": "query"})
    prefixed_by_hand = embed("検索クエリ: 名古屋大学で開発されたモデルについて教えて。")
    both = embed("検索クエリ: 名古屋大学で開発されたモデルについて教えて。", extra_body={"input_type": "query"})
    plain = embed("名古屋大学で開発されたモデルについて教えて。")
    assert np.allclose(with_input_type, prefixed_by_hand, atol=1e-6)
    assert np.allclose(both, prefixed_by_hand, atol=1e-6)
    assert not np.allclose(with_input_type, plain, atol=1e-3)


def test_base64_embeddings_are_the_float32_bytes_of_the_float_ones(client):
    texts = ["富士山は日本で一番高い山です。"]
    floats = client.embeddings.create(model="ruri-embed", input=texts, encoding_format="float")
    encoded = client.embeddings.create(model="ruri-embed", input=texts, encoding_format="base64",
                                       extra_body={"dimensions": 8})
    decoded = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")
    expected = np.array(floats.data[0].embedding[:8])
    assert np.allclose(decoded, expected / np.linalg.norm(expected), atol=1e-6)


def test_completions_answer_each_prompt(client):
    response = client.completions.create(model="neuroq", prompt=["こんにちは", "今日は"], max_tokens=6,
                                         temperature=0)
    assert [choice.index for choice in response.choices] == [0, 1]
    assert all(choice.finish_reason in ("stop", "length") for choice in response.choices)
    assert response.usage.completion_tokens <= 12
    assert response.model == "neuroq"


def test_chat_answers_as_the_assistant(client):
    response = client.chat.completions.create(model="neuroq", messages=CHAT, max_tokens=8, seed=3)
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert isinstance(response.choices[0].message.content, str)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_chat_adds_up_to_the_same_answer_as_the_whole_one(client):
    whole = client.chat.completions.create(model="neuroq", messages=CHAT, max_tokens=40, seed=11)
    chunks = list(client.chat.completions.create(model="neuroq", messages=CHAT, max_tokens=40, seed=11,
                                                 stream=True, stream_options={"include_usage": True}))

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(content) > 1  # piece by piece, not the answer in one event
    assert "".join(content) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_streamed_completions_hold_back_text_that_becomes_a_stop_string(client):
    """The stop string is taken from the middle of the unstopped answer: the stream must not send its first
    characters before it knows they are cut."""
    prompts = ["こんにちは", "今日は"]
    free = client.completions.create(model="neuroq", prompt=prompts, max_tokens=30, temperature=0)
    text = free.choices[0].text
    assert len(text) > 6, text
    stop = text[len(text) // 2:len(text) // 2 + 2]

    whole = client.completions.create(model="neuroq", prompt=prompts, max_tokens=30, temperature=0, stop=stop)
    streamed = {0: "", 1: ""}
    reasons = {}
    for chunk in client.completions.create(model="neuroq", prompt=prompts, max_tokens=30, temperature=0, stop=stop,
                                           stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert streamed == {choice.index: choice.text for choice in whole.choices}
    assert reasons == {choice.index: choice.finish_reason for choice in whole.choices}
    assert reasons[0] == "stop"


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c: c.chat.completions.create(model="neuroq", messages=CHAT, max_tokens=MAX_NEW_TOKENS + 1),
         "max_tokens"),
        (lambda c: c.chat.completions.create(model="neuroq", messages=[{"role": "robot", "content": "x"}]),
         "messages[0].role"),
        (lambda c: c.chat.completions.create(model="neuroq", messages=CHAT, temperature=-1, stream=True),
         "temperature"),
        (lambda c: c.completions.create(model="neuroq", prompt="x", presence_penalty=0.5), "presence_penalty"),
        (lambda c: c.embeddings.create(model="ruri-embed", input=["ok", ""]), "input[1]"),
        (lambda c: c.embeddings.create(model="ruri-embed", input="x", extra_body={"input_type": "poem"}),
         "input_type"),
    ],
)
def test_a_refused_request_raises_bad_request_naming_the_field(client, call, param):
    with pytest.raises(openai.BadRequestError) as raised:
        call(client)
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param
    assert raised.value.body["message"].startswith(f"{param}: ")
    assert raised.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert raised.value.body["param"] == "model"
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ruri-embed", messages=CHAT)


def test_a_wrong_api_key_is_refused(front):
    wrong = openai.OpenAI(base_url=f"{front.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.models.list()
    assert raised.value.body["code"] == "invalid_api_key"
