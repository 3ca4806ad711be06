"""A pipeline run whose evaluate or register step fails leaves `@champion` and `@challenger` where they were, leaves
no new version aliased, and marks the step's run and the pipeline's run FAILED (real steps, real sqlite registry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.steps import base
from components.steps.evaluation import evaluate, register
from neuroq.errors import CheckpointError
from serving.promotion import CHALLENGER, CHAMPION, Evaluation, PromotionError, promote
from tests.faults.conftest import aliases, seed_registry, step_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one takes seconds); each test registers its own model name."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("faults", str(root / "artifacts"))
    return uri


def _children(client: MlflowClient, parent_run_id: str) -> set[tuple[str, str]]:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {(run.info.run_name, run.info.status) for run in runs}


def test_evaluate_and_register_on_corrupted_weights_move_no_alias(store, trained, val_dir, tmp_path):
    client = MlflowClient(store)
    name = "corrupted"
    before = seed_registry(store, name, val_dir)
    params = step_params(name)
    run = base.start(params, tracking_uri=store)
    corrupted = Path(shutil.copytree(trained, tmp_path / "model"))
    weights = corrupted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # an interrupted copy of the train step's output

    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        evaluate(params, run, str(corrupted), str(val_dir))
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        register(params, run, str(corrupted), str(val_dir),
                 evaluation={"val_bits_per_char": 0.1, "validation_digest": "d"}, train_digest="t")

    assert aliases(client, name) == before == {CHAMPION: "1", CHALLENGER: "2"}
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert client.get_run(run.parent_run_id).info.status == "FAILED"
    assert _children(client, run.parent_run_id) == {("evaluate", "FAILED"), ("register", "FAILED")}


def test_a_register_step_failing_after_its_version_is_registered_leaves_that_version_unaliased(
    store, trained, val_dir
):
    """The new version is registered, tagged and smoke-tested; then the champion cannot be re-scored on the new
    validation text (its files are gone from the artifact store), so the step fails at the last moment."""
    client = MlflowClient(store)
    name = "unscorable-champion"
    before = seed_registry(store, name, val_dir)
    params = step_params(name)
    run = base.start(params, tracking_uri=store)
    evaluation = evaluate(params, run, str(trained), str(val_dir))
    shutil.rmtree(Path(client.get_model_version_download_uri(name, "1")))
    other_text = {**evaluation, "validation_digest": "f" * 64}  # the champion has no score on this text

    with pytest.raises(PromotionError, match="champion version 1 could not be re-scored .* so no alias moved"):
        register(params, run, str(trained), str(val_dir), evaluation=other_text, train_digest="t")

    assert aliases(client, name) == before
    new = client.get_model_version(name, "3")
    assert new.status == "READY" and new.aliases == [] and "promotion" not in new.tags
    assert client.get_run(run.parent_run_id).info.status == "FAILED"
    assert _children(client, run.parent_run_id) == {("evaluate", "FINISHED"), ("register", "FAILED")}


class FailingChampionMove(MlflowClient):
    """The real registry, except that moving `@champion` fails, as when the server dies between two requests."""

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if alias == CHAMPION:
            raise ConnectionError("tracking server went away")
        super().set_registered_model_alias(name, alias, version)


def test_when_champion_cannot_move_the_challenger_already_moved_is_put_back(store, trained, val_dir):
    name = "half-promoted"
    before = seed_registry(store, name, val_dir)
    client = FailingChampionMove(store)
    new = client.create_model_version(name, client.get_model_version(name, "2").source).version

    with pytest.raises(PromotionError, match="@challenger was put back to 2, so no alias moved"):
        promote(client, name, new, Evaluation(1.0, "digest-a", {}), smoke_test=lambda uri: None,
                rescore=lambda uri: 2.0)

    assert aliases(client, name) == before
    assert client.get_model_version(name, new).tags["promotion"] == "failed"
