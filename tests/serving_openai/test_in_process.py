"""mlflow.pyfunc users stream in-process: the registered generation model's own predict_stream, without the front."""

from __future__ import annotations

import logging

import mlflow
import pytest

from serving.base.request import RequestError
from tests.serving_openai.conftest import MAX_NEW_TOKENS, long_greedy_chat

CHAT = {"messages": [{"role": "user", "content": "今日は"}], "max_tokens": 24, "seed": 5}


@pytest.fixture(scope="module")
def generator(registry, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NEUROQ_SERVING_SESSION_DIR", str(tmp_path_factory.mktemp("sessions")))
        env.setenv("NEUROQ_SERVING_MAX_NEW_TOKENS", str(MAX_NEW_TOKENS))
        yield mlflow.pyfunc.load_model("models:/neuroq@champion")


def test_predict_stream_yields_openai_chunks_that_add_up_to_predict(generator):
    whole = generator.predict(CHAT)
    chunks = list(generator.predict_stream(CHAT))
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_predict_refuses_stream_true_and_names_the_way_to_stream(generator):
    with pytest.raises(RequestError, match="predict_stream") as raised:
        generator.predict({**CHAT, "stream": True})
    assert raised.value.field == "stream"
    with pytest.raises(RequestError) as raised:
        next(generator.predict_stream({"input": {"action": "health"}}))
    assert raised.value.field == "request"


def test_closing_the_stream_stops_its_decoding(generator, caplog):
    body = long_greedy_chat(generator.predict)
    stream = generator.predict_stream(body)
    with caplog.at_level(logging.INFO, logger="serving.generation.stream"):
        while not next(stream)["choices"][0]["delta"].get("content"):
            pass
        stream.close()
        # The decoder notices at its next step; this request then runs on the freed batcher thread.
        generator.predict({**CHAT, "max_tokens": 2})
    [stopped] = [r.getMessage() for r in caplog.records if "stream reader gone" in r.getMessage()]
    assert int(stopped.rsplit(" ", 1)[-1]) < MAX_NEW_TOKENS
