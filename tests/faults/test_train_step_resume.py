"""train_neuroq with a `checkpoint_dir` (a PVC on a cluster): a retried step resumes from its last checkpoint and
ends with exactly the weights of an uninterrupted step, a step that failed after training does not train again,
and a step with other inputs never picks up a checkpoint that is not its own.

The step runs in-process as the KFP component calls it, on the bundled corpus, logging to a sqlite store. The
first attempt fails the way a preempted node or a crash would, by an exception from a callback put in front of
the step's own through a wrapper of `neuroq.train.train` (no hooks in the product).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps import training_metrics
from tests.faults.conftest import call_first_in_training, run_train_neuroq, train_neuroq_inputs
from tests.pipeline.conftest import TINY

pytestmark = pytest.mark.slow

STEPS = 40
CKPT_INTERVAL = 10
CRASH_STEP = 26  # a logged step (log_interval 2) after the checkpoint of step 20


class Preempted(RuntimeError):
    """The stand-in for the node going away."""


@pytest.fixture
def prepared(tmp_path: Path):
    params = PipelineParams(**{**TINY, "experiment_name": "resume"}, max_steps=STEPS,
                            checkpoint_dir=str(tmp_path / "checkpoints"), ckpt_interval=CKPT_INTERVAL)
    return train_neuroq_inputs(params, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)


@pytest.fixture
def crash(monkeypatch: pytest.MonkeyPatch) -> dict[str, int | None]:
    """`crash["at"] = step` makes the next training raise when it reports that step; None trains normally."""
    plan: dict[str, int | None] = {"at": None}

    def preempt(metrics: dict[str, float], step: int) -> None:
        if step == plan["at"]:
            plan["at"] = None
            raise Preempted(f"node preempted at step {step}")

    call_first_in_training(monkeypatch, preempt)
    return plan


def train_step(prepared, name: str, **changes) -> Path:
    return run_train_neuroq(prepared, name, **changes)[1]


def attempts(prepared) -> list:
    """The train_neuroq runs under the parent, oldest first."""
    _, run, _ = prepared
    client = MlflowClient(run.tracking_uri)
    return client.search_runs([client.get_run(run.parent_run_id).info.experiment_id],
                              filter_string="tags.`neuroq.step` = 'train_neuroq'", order_by=["start_time ASC"])


def weights_digest(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def test_a_retried_step_resumes_from_the_last_checkpoint_and_ends_with_the_uninterrupted_weights(prepared, crash):
    reference = train_step(prepared, "reference", checkpoint_dir="")
    crash["at"] = CRASH_STEP
    with pytest.raises(Preempted):
        train_step(prepared, "model")
    [kept] = list(Path(prepared[0].checkpoint_dir).iterdir())
    assert kept.name.startswith("train_neuroq-") and (kept / "last").is_dir()

    resumed = train_step(prepared, "model")

    client = MlflowClient(prepared[1].tracking_uri)
    _, failed, retried = attempts(prepared)
    assert (failed.info.status, retried.info.status) == ("FAILED", "FINISHED")
    assert (failed.data.params["resumed_from_step"], retried.data.params["resumed_from_step"]) == ("0", "20")
    assert [m.step for m in client.get_metric_history(retried.info.run_id, "train_loss")] == list(range(22, 41, 2))
    assert weights_digest(resumed) == weights_digest(reference)
    # Scratch once the step succeeded: a finished training has nothing to resume.
    assert list(Path(prepared[0].checkpoint_dir).iterdir()) == []


@pytest.mark.parametrize("gpus", [1, 2], ids=["in-process", "torchrun"])
def test_a_step_that_failed_after_training_does_not_train_again(prepared, crash, monkeypatch, gpus):
    def plot_fails(history):
        raise ConnectionError("MLflow went away while the plot was uploaded")

    with monkeypatch.context() as patch:
        patch.setattr(training_metrics, "log_loss_curve", plot_fails)
        with pytest.raises(ConnectionError):
            train_step(prepared, "model", gpus=gpus)
    first = weights_digest(prepared[2] / "model")

    train_step(prepared, "model", gpus=gpus)

    _, retried = attempts(prepared)
    assert retried.data.params["resumed_from_step"] == str(STEPS)
    assert weights_digest(prepared[2] / "model") == first


def test_a_step_with_other_inputs_does_not_resume_a_checkpoint_that_is_not_its_own(prepared, crash):
    crash["at"] = CRASH_STEP
    with pytest.raises(Preempted):
        train_step(prepared, "model")
    [other] = list(Path(prepared[0].checkpoint_dir).iterdir())

    train_step(prepared, "model", learning_rate=prepared[0].learning_rate / 2)

    _, changed = attempts(prepared)
    assert changed.data.params["resumed_from_step"] == "0"
    # The interrupted training's checkpoint is left for its own retry.
    assert list(Path(prepared[0].checkpoint_dir).iterdir()) == [other]
