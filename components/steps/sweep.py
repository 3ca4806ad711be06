"""The MLflow-tracked sweep: an Optuna study whose trials are child runs of one parent run.

MLflow is driven directly, not through optuna-integration's ``MLflowCallback``: the callback opens a trial's run
only after the trial has ended (params and the final value, no validation curve, unless the objective is also
wrapped in ``track_in_mlflow``), and a pruned trial raising out of ``track_in_mlflow``'s run marks it FAILED.
Here each trial's run is opened by ``tracking.step_run`` like every pipeline step's (same retry policy, tags,
system metrics), carries the training loop's metrics with ``val_bits_per_char`` at every validation (what the
pruner decided on), and ends FINISHED, or KILLED with ``optuna.state=PRUNED`` when pruned.

The parent run's id is kept in the study (``out_dir/study.db``), so a sweep run again on the same ``out_dir``
continues the study under the same parent: a long sweep can run in chunks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from components.steps import tracking
from components.steps.training_metrics import TrainingMetricsLogger
from neuroq.recipe import Recipe
from neuroq.sweep import (
    KNOBS,
    SweepConfig,
    SweepData,
    TrialResult,
    create_study,
    optuna_objective,
    prepare_data,
    recipe_from,
    run_trial,
)
from neuroq.train import TrainConfig

__all__ = ["SWEEP_TAG", "SweepSummary", "TRIAL_TAG", "run_sweep", "sweep_table"]

log = logging.getLogger(__name__)

SWEEP_TAG = "neuroq.sweep"
TRIAL_TAG = "optuna.trial"
_PARENT_ATTR = "mlflow_parent_run_id"


@dataclass
class SweepSummary:
    parent_run_id: str
    best_trial: int
    best_value: float
    best_settings: dict[str, Any]
    n_complete: int
    n_pruned: int
    recipe_path: str
    table: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_sweep(cfg: SweepConfig, *, tracking_uri: str = "", experiment_name: str = "neuroq-sweep",
              recipe_out: str = "", recipe_name: str = "") -> SweepSummary:
    """Run ``cfg.n_trials`` more trials of the study in ``cfg.out_dir`` and write the best as a recipe.

    ``recipe_out`` defaults to ``out_dir/recipe.json``; ``recipe_name`` to the study name.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    data = prepare_data(cfg)  # before the parent run: bad data leaves no run behind
    study = create_study(cfg)
    parent = _parent_run(study, cfg, uri, experiment_name)

    def tracked(trial: optuna.Trial, settings: dict[str, Any], report: Any) -> TrialResult:
        return _tracked_trial(cfg, data, uri, parent, experiment_name, trial, settings, report)

    try:
        study.optimize(optuna_objective(cfg, data, tracked), n_trials=cfg.n_trials, timeout=cfg.timeout_s or None)
    except BaseException:
        MlflowClient(uri).set_terminated(parent, RunStatus.to_string(RunStatus.FAILED))
        raise
    summary = _summarise(study, cfg, parent, recipe_out or str(Path(cfg.out_dir) / "recipe.json"),
                         recipe_name or cfg.study_name)
    client = MlflowClient(uri)
    client.log_text(parent, summary.table, "sweep/table.md")
    client.log_dict(parent, Recipe.load(summary.recipe_path).to_dict(), "sweep/recipe.json")
    tracking.log_on_parent(uri, parent, {"best_val_bits_per_char": summary.best_value,
                                         "trials_complete": summary.n_complete, "trials_pruned": summary.n_pruned},
                           {"best_trial": str(summary.best_trial)})
    tracking.finish_pipeline_run(uri, parent)
    return summary


def _parent_run(study: optuna.Study, cfg: SweepConfig, uri: str, experiment_name: str) -> str:
    """The study's parent run: the one it already has (a continued sweep, set RUNNING again) or a new one."""
    existing = study.user_attrs.get(_PARENT_ATTR)
    if existing:
        MlflowClient(uri).update_run(existing, status="RUNNING")
        return str(existing)
    params = {f"sweep.{k}": v for k, v in asdict(cfg).items()}
    run_id = tracking.start_pipeline_run(uri, experiment_name, f"sweep-{cfg.study_name}", params,
                                         {SWEEP_TAG: cfg.study_name, "code_version": tracking.code_version()})
    study.set_user_attr(_PARENT_ATTR, run_id)
    return run_id


def _tracked_trial(cfg: SweepConfig, data: SweepData, uri: str, parent: str, experiment_name: str,
                   trial: optuna.Trial, settings: dict[str, Any], report: Any) -> TrialResult:
    """One trial in its own child run; a pruned trial's run ends KILLED, and the prune reaches Optuna after."""
    pruned: optuna.TrialPruned | None = None
    with tracking.step_run(uri, parent, f"trial-{trial.number}", experiment_name) as active:
        mlflow.set_tags({TRIAL_TAG: str(trial.number), SWEEP_TAG: cfg.study_name,
                         **{f"optuna.{k}": str(v) for k, v in trial.user_attrs.items()}})
        mlflow.log_params(settings)
        metrics = TrainingMetricsLogger(uri, active.info.run_id)
        try:
            result = run_trial(cfg, settings, data, str(Path(cfg.out_dir) / "trials" / str(trial.number)),
                               report=report, callbacks=(metrics,))
        except optuna.TrialPruned as exc:
            # Raised out of the run, it would mark this run and the sweep's parent FAILED: a prune is no failure.
            pruned = exc
        metrics.flush()
        if pruned is not None:
            mlflow.set_tag("optuna.state", "PRUNED")
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        else:
            mlflow.log_metrics({"final_val_bits_per_char": result.val_bits_per_char,
                                "best_val_bits_per_char": result.best_val_bits_per_char,
                                "train_tokens_per_s": result.tokens_per_s})
            mlflow.set_tag("optuna.state", "COMPLETE")
    if pruned is not None:
        raise pruned
    return result


def _summarise(study: optuna.Study, cfg: SweepConfig, parent: str, recipe_path: str, name: str) -> SweepSummary:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    if not complete:
        raise optuna.exceptions.OptunaError(f"the study in {cfg.out_dir} has no complete trial yet: run more trials")
    best = study.best_trial
    config = TrainConfig(**best.user_attrs["train_config"])
    notes = {"val_bits_per_char": best.value, "study": cfg.study_name, "trial": best.number,
             "mlflow_parent_run_id": parent}
    baseline = _baseline(study)
    if baseline is not None:
        notes["defaults_val_bits_per_char"] = baseline
    recipe = recipe_from(cfg, name, config, notes=notes)
    path = recipe.save(recipe_path)
    return SweepSummary(parent, best.number, float(best.value), dict(best.params), len(complete), len(pruned),
                        str(path), sweep_table(study))


def _baseline(study: optuna.Study) -> float | None:
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if trial.user_attrs.get("label") == "defaults":
            return float(trial.value)  # type: ignore[arg-type]
    return None


def sweep_table(study: optuna.Study) -> str:
    """Markdown: one row per finished trial, best first, with its settings, val bits/char and tokens/s."""
    rows = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    rows.sort(key=lambda t: (t.state != optuna.trial.TrialState.COMPLETE, t.value if t.value is not None else math.inf))
    head = ["trial", *KNOBS, "val bits/char", "tokens/s", "state"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t in rows:
        label = f"{t.number} ({t.user_attrs['label']})" if "label" in t.user_attrs else str(t.number)
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                       if t.intermediate_values else math.nan)
        at = "" if t.state == optuna.trial.TrialState.COMPLETE else f" at eval {max(t.intermediate_values, default=0)}"
        tps = t.user_attrs.get("tokens_per_s")
        lines.append("| " + " | ".join([label, *(_fmt(t.params.get(k)) for k in KNOBS), f"{value:.3f}",
                                         f"{tps:,.0f}" if tps else "", t.state.name.lower() + at]) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
