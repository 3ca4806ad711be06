"""The registry policy (serving/promotion.py) on a real sqlite registry, and failing steps that move no alias."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps import base
from components.steps.evaluation import evaluate, register
from serving.promotion import CHALLENGER, CHAMPION, Evaluation, PromotionError, promote, score_tag
from tests.support.pyfunc_models import Constant


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[str, str]:
    """A sqlite store shared by the module (creating one takes seconds) and the experiment to log into."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # An explicit artifact location: the default experiment's would be ./mlruns in the working directory.
    return uri, MlflowClient(uri).create_experiment("promotion", str(root / "artifacts"))


@pytest.fixture
def tracking_uri(registry: tuple[str, str]) -> str:
    mlflow.set_tracking_uri(registry[0])  # conftest puts the previous one back after the test
    return registry[0]


def _new_version(name: str) -> str:
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("promotion").experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[],
                                       registered_model_name=name)
    return str(info.registered_model_version)


def _aliases(name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in MlflowClient().get_registered_model(name).aliases.items()}


def _never(model_uri: str) -> float:
    raise AssertionError(f"re-scored {model_uri} although a stored score exists")


def test_first_version_becomes_champion_and_challenger(tracking_uri):
    version = _new_version("first")
    decision = promote(MlflowClient(), "first", version, Evaluation(2.0, "digest-a", {}), smoke_test=lambda uri: None,
                       rescore=_never)
    assert decision.promoted and decision.reason.startswith("promoted: no champion yet")
    assert _aliases("first") == {CHAMPION: version, CHALLENGER: version}


def test_a_version_that_does_not_load_and_generate_moves_no_alias(tracking_uri):
    client = MlflowClient()
    champion = _new_version("broken")
    promote(client, "broken", champion, Evaluation(2.0, "digest-a", {}), smoke_test=lambda uri: None, rescore=_never)
    broken = _new_version("broken")

    def smoke_test(uri: str) -> None:
        raise RuntimeError("weights are a Git LFS pointer")

    with pytest.raises(PromotionError, match="did not load and generate, so no alias moved"):
        promote(client, "broken", broken, Evaluation(1.0, "digest-a", {}), smoke_test=smoke_test, rescore=_never)
    assert _aliases("broken") == {CHAMPION: champion, CHALLENGER: champion}


def test_a_worse_or_equal_challenger_keeps_the_champion(tracking_uri):
    client = MlflowClient()
    champion = _new_version("ties")
    promote(client, "ties", champion, Evaluation(2.0, "digest-a", {}), smoke_test=lambda uri: None, rescore=_never)
    tie = _new_version("ties")
    decision = promote(client, "ties", tie, Evaluation(2.0, "digest-a", {}), smoke_test=lambda uri: None,
                       rescore=_never)
    assert not decision.promoted
    assert decision.reason == (
        f"kept champion version {champion}: challenger bits/char 2.0000 does not beat 2.0000 (stored score) "
        "on validation set digest-a"
    )
    assert _aliases("ties") == {CHAMPION: champion, CHALLENGER: tie}
    assert client.get_model_version("ties", tie).tags["promotion_reason"] == decision.reason


def test_a_champion_scored_on_other_data_is_rescored_on_the_challengers_validation_set(tracking_uri):
    client = MlflowClient()
    champion = _new_version("rescore")
    promote(client, "rescore", champion, Evaluation(1.5, "digest-a", {}), smoke_test=lambda uri: None, rescore=_never)
    challenger = _new_version("rescore")
    scored = []

    def rescore(uri: str) -> float:
        scored.append(uri)
        return 3.5  # on digest-b the champion is worse than its digest-a score suggests

    decision = promote(client, "rescore", challenger, Evaluation(3.0, "digest-b", {}), smoke_test=lambda uri: None,
                       rescore=rescore)
    assert scored == [f"models:/rescore/{champion}"]
    assert decision.promoted and "re-scored on this validation set" in decision.reason
    assert _aliases("rescore") == {CHAMPION: challenger, CHALLENGER: challenger}
    # The champion's new score is cached per validation set for the next comparison.
    assert client.get_model_version("rescore", champion).tags[score_tag("digest-b")] == "3.5"


def test_a_champion_that_cannot_be_rescored_moves_no_alias(tracking_uri):
    client = MlflowClient()
    champion = _new_version("unscorable")
    promote(client, "unscorable", champion, Evaluation(1.5, "digest-a", {}), smoke_test=lambda uri: None,
            rescore=_never)
    challenger = _new_version("unscorable")

    def rescore(uri: str) -> float:
        raise OSError("artifact store unreachable")

    with pytest.raises(PromotionError, match="could not be re-scored"):
        promote(client, "unscorable", challenger, Evaluation(1.0, "digest-b", {}), smoke_test=lambda uri: None,
                rescore=rescore)
    assert _aliases("unscorable") == {CHAMPION: champion, CHALLENGER: champion}


def test_failing_evaluate_and_register_steps_move_no_alias_and_fail_the_pipeline_run(tracking_uri, tmp_path):
    client = MlflowClient()
    champion = _new_version("neuroq-failing")
    promote(client, "neuroq-failing", champion, Evaluation(2.0, "digest-a", {}), smoke_test=lambda uri: None,
            rescore=_never)
    params = PipelineParams(registered_model_name="neuroq-failing", experiment_name="failing")
    run = base.start(params, tracking_uri=tracking_uri)
    pointer = tmp_path / "checkpoint"
    pointer.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.model"):
        # What a clone without `git lfs pull` holds instead of the files.
        (pointer / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 58000000\n")
    val_dir = tmp_path / "validation"
    val_dir.mkdir()
    (val_dir / "part-00000.jsonl").write_text('{"text": "<USER>こんにちは<ASSISTANT>こんにちは"}\n', encoding="utf-8")

    with pytest.raises(Exception, match="LFS pointer"):
        evaluate(params, run, str(pointer), str(val_dir))
    with pytest.raises(Exception, match="LFS pointer"):
        register(params, run, str(pointer), str(val_dir),
                 evaluation={"val_bits_per_char": 0.1, "validation_digest": "digest-a"}, train_digest="x")

    assert _aliases("neuroq-failing") == {CHAMPION: champion, CHALLENGER: champion}
    assert client.get_run(run.parent_run_id).info.status == "FAILED"
    children = client.search_runs([client.get_run(run.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.parent_run_id}'")
    assert {(c.info.run_name, c.info.status) for c in children} == {("evaluate", "FAILED"), ("register", "FAILED")}
    assert len(client.search_model_versions("name = 'neuroq-failing'")) == 1
