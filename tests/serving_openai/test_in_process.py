"""mlflow.pyfunc users stream in-process: the registered generation model's own predict_stream, without the front;
and a version registered before predict_stream existed, which cannot stream."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
import openai
import pytest
from mlflow.exceptions import MlflowException
from starlette.testclient import TestClient

from serving.base.request import RequestError
from serving.openai.app import build_app
from serving.openai.config import FrontConfig
from serving.openai.models import load_model
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


# The last commit before predict_stream existed (the next one, 02fa11d, added it with the front).
PRE_STREAMING_COMMIT = "53ffcc04afea93537dc43d66202c6f4f37aae090"
LOG_WITH_THAT_CODE = """
import sys
import mlflow, torch
from neuroq.checkpoint import save_checkpoint
from neuroq.corpus import bundled_dialogues
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from serving.generation.log import log_neuroq_model

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("serving-generation")
tokenizer = NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=1000, character_coverage=0.98,
                                                                       hard_vocab_limit=False, num_threads=1))
torch.manual_seed(0)
model = NeuroQ(NeuroQConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
with mlflow.start_run():
    log_neuroq_model(save_checkpoint(sys.argv[2], model, tokenizer), registered_model_name="neuroq-prestreaming")
"""


@pytest.fixture(scope="module")
def pre_streaming(registry, tmp_path_factory):
    """neuroq-prestreaming version 1: a tiny NeuroQ logged and registered by the serving and neuroq code of
    PRE_STREAMING_COMMIT (run from a copy of that commit), loaded as the front loads its models."""
    code = tmp_path_factory.mktemp("pre-streaming-code")
    archive = subprocess.run(["git", "-C", str(Path(__file__).parents[2]), "archive", PRE_STREAMING_COMMIT, "neuroq",
                              "serving"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {PRE_STREAMING_COMMIT} is not in this clone: {archive.stderr.decode()[:300]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(code, filter="data")
    # cwd and PYTHONPATH: that commit's packages, not this checkout's
    subprocess.run([sys.executable, "-c", LOG_WITH_THAT_CODE, registry, str(code / "checkpoint")], cwd=code,
                   env={**os.environ, "PYTHONPATH": str(code)}, check=True, timeout=300)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NEUROQ_SERVING_SESSION_DIR", str(tmp_path_factory.mktemp("sessions")))
        yield load_model("generate", "models:/neuroq-prestreaming/1")


def test_a_version_logged_before_predict_stream_answers_but_refuses_to_stream(pre_streaming):
    """Its MLmodel says it cannot stream, so mlflow.pyfunc refuses predict_stream; the front answers its requests
    and refuses "stream": true with a 400 naming `stream` (why not a one-chunk stream: serving/README.md)."""
    assert pre_streaming.streams is False
    with pytest.raises(MlflowException, match="does not support predict_stream"):
        next(pre_streaming.pyfunc.predict_stream(CHAT))
    app = build_app({"generate": pre_streaming}, FrontConfig(generate=pre_streaming.served.uri))
    with TestClient(app) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        answer = client.chat.completions.create(model="neuroq-prestreaming", **CHAT)
        assert answer.choices[0].message.role == "assistant"
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="neuroq-prestreaming", stream=True, **CHAT)
    assert raised.value.body["param"] == "stream"
    assert "register it again" in raised.value.body["message"]
