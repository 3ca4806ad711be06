"""The sweep: `python -m mlflow_project.sweep run` on the bundled corpus with a tiny model and a real sqlite MLflow
store; each trial a child run of the sweep's parent run, a clearly bad trial pruned from its validation curve,
the best settings written as a recipe that `python -m neuroq train --recipe` trains with."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.steps.sweep import SWEEP_TAG, TRIAL_TAG
from mlflow_project import sweep as sweep_cli
from neuroq.__main__ import main as neuroq_main
from neuroq.checkpoint import read_checkpoint_config
from neuroq.recipe import Recipe
from neuroq.sweep import OPTION_DEFAULTS, SweepConfig, create_study

pytestmark = pytest.mark.slow

# About a second per trial; vocabulary 1500 is what the bundled corpus's characters need.
TINY = SweepConfig(out_dir="", study_name="tiny", n_trials=3, token_budget=40_000, n_embd=32, n_ff=64, n_head=2,
                   n_layer=1, context=32, vocab_size=1500, val_chars=0, evals=4, startup_trials=3, prune_after=2,
                   device="cpu", baseline=False)
GOOD = dict(lr=3e-3, min_lr_ratio=0.1, warmup_fraction=0.0, weight_decay=0.1, beta1=0.9, beta2=0.95, batch_size=8,
            dropout=0.0, grad_clip=1.0, **OPTION_DEFAULTS)
# A learning rate 3000x too small: after the first quarter of the budget it is still near the uniform model.
BAD = {**GOOD, "lr": 1e-6}


@dataclass(frozen=True)
class Sweep:
    out_dir: Path
    tracking_uri: str
    recipe: Path
    stdout: str


def _flags(cfg: SweepConfig) -> list[str]:
    return ["--out-dir", cfg.out_dir, "--study-name", cfg.study_name, "--n-trials", str(cfg.n_trials),
            "--token-budget", str(cfg.token_budget), "--n-embd", str(cfg.n_embd), "--n-ff", str(cfg.n_ff),
            "--n-head", str(cfg.n_head), "--n-layer", str(cfg.n_layer), "--context", str(cfg.context),
            "--vocab-size", str(cfg.vocab_size), "--val-chars", "0", "--evals", str(cfg.evals),
            "--startup-trials", str(cfg.startup_trials), "--prune-after", str(cfg.prune_after), "--device", "cpu",
            "--no-baseline"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    out = tmp_path_factory.mktemp("sweep")
    cfg = SweepConfig(**{**TINY.__dict__, "out_dir": str(out / "study")})
    # Two good settings first, then the bad one: the median pruner has two finished curves to compare it with.
    study = create_study(cfg)
    for settings in (GOOD, {**GOOD, "lr": 1e-3}, BAD):
        study.enqueue_trial(settings)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    recipe = out / "best.yaml"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = sweep_cli.main(["run", *_flags(cfg), "--tracking-uri", uri, "--experiment-name", "sweep-test",
                               "--recipe-out", str(recipe), "--recipe-name", "tiny-best"])
    assert code == 0, stdout.getvalue()
    return Sweep(out / "study", uri, recipe, stdout.getvalue())


def _runs(sweep: Sweep) -> tuple:
    client = MlflowClient(sweep.tracking_uri)
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if SWEEP_TAG in r.data.tags and TRIAL_TAG not in r.data.tags]
    trials = sorted((r for r in runs if TRIAL_TAG in r.data.tags), key=lambda r: int(r.data.tags[TRIAL_TAG]))
    return client, parents, trials


def test_each_trial_is_a_child_run_of_the_sweeps_parent_run_with_its_validation_curve(sweep: Sweep) -> None:
    client, parents, trials = _runs(sweep)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert [r.data.tags[TRIAL_TAG] for r in trials] == ["0", "1", "2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    assert trials[0].data.params["lr"] == "0.003"
    curve = client.get_metric_history(trials[0].info.run_id, "val_bits_per_char")
    assert len(curve) == TINY.evals and curve[-1].value < curve[0].value


def test_a_clearly_bad_trial_is_pruned_and_its_run_ends_killed(sweep: Sweep) -> None:
    _, _, trials = _runs(sweep)
    bad = trials[2]
    assert bad.data.params["lr"] == "1e-06"
    assert bad.info.status == "KILLED" and bad.data.tags["optuna.state"] == "PRUNED"
    # Stopped at the first validation, before the rest of the budget was spent.
    assert len(MlflowClient(sweep.tracking_uri).get_metric_history(bad.info.run_id, "val_bits_per_char")) == 1
    assert [r.info.status for r in trials[:2]] == ["FINISHED", "FINISHED"]


def test_the_sweep_reports_the_best_trial_and_writes_it_as_a_recipe(sweep: Sweep) -> None:
    _, parents, trials = _runs(sweep)
    finals = {r.data.tags[TRIAL_TAG]: r.data.metrics["final_val_bits_per_char"] for r in trials[:2]}
    best = min(finals, key=finals.get)
    summary = json.loads(sweep.stdout[sweep.stdout.index("{"):])
    assert summary["best_trial"] == int(best) and summary["n_complete"] == 2 and summary["n_pruned"] == 1
    assert summary["best_value"] == pytest.approx(finals[best])
    assert parents[0].data.metrics["best_val_bits_per_char"] == pytest.approx(finals[best])
    assert "| 2 | 1e-06 |" in sweep.stdout and "pruned at eval 1" in sweep.stdout  # the sweep table
    recipe = Recipe.load(sweep.recipe)
    assert recipe.name == "tiny-best"
    assert recipe.train["lr"] == pytest.approx(float(trials[int(best)].data.params["lr"]))
    assert recipe.notes["val_bits_per_char"] == pytest.approx(finals[best])


def test_a_continued_sweep_adds_trials_under_the_same_parent_run(sweep: Sweep, tmp_path: Path) -> None:
    cfg = SweepConfig(**{**TINY.__dict__, "out_dir": str(sweep.out_dir), "n_trials": 1})
    code = sweep_cli.main(["run", *_flags(cfg), "--tracking-uri", sweep.tracking_uri, "--experiment-name",
                           "sweep-test", "--recipe-out", str(tmp_path / "again.json")])
    assert code == 0
    _, parents, trials = _runs(sweep)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [r.data.tags[TRIAL_TAG] for r in trials] == ["0", "1", "2", "3"]


def test_train_with_the_recipe_trains_with_its_settings(sweep: Sweep, tmp_path: Path) -> None:
    recipe = Recipe.load(sweep.recipe)
    out = tmp_path / "run"
    code = neuroq_main(["train", "--recipe", str(sweep.recipe), "--max-steps", "3", "--n-embd", "32", "--n-ff",
                        "64", "--n-head", "2", "--n-layer", "1", "--max-seq-len", "32", "--vocab-size", "1500",
                        "--out-dir", str(out), "--device", "cpu", "--eval-interval", "0", "--log-level", "WARNING"])
    assert code == 0
    used = read_checkpoint_config(out / "final")["extra"]["train_config"]
    # Every setting of the recipe, except max_steps, which the flag overrode.
    for key, value in recipe.train.items():
        assert used[key] == (3 if key == "max_steps" else value), key
    assert used["model"]["dropout"] == recipe.model["dropout"]
