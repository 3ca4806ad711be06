"""The MLflow UI (`mlflow server` on a sqlite store) renders a pipeline run, checked in headless Chromium.

Needs Debian's chromium (`apt-get install -y chromium`); skipped with that message when it is missing.
NEUROQ_UPDATE_DOCS=1 also copies the screenshots to docs/ (mlflow-run.png, mlflow-experiment.png).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.steps.summary import experiment_page
from components.steps.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed: apt-get install -y chromium")


def _browse(chromium: str, profile: Path, url: str, *mode: str, wait_ms: int = 15000) -> subprocess.CompletedProcess:
    # Without the background-networking flags Chromium keeps trying to reach Google, which this sandbox refuses.
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,1000", f"--virtual-time-budget={wait_ms}",
    ]
    return subprocess.run([chromium, *flags, *mode, url], capture_output=True, text=True, timeout=180)


def test_run_page_shows_the_pipeline_run_its_step_runs_and_the_promotion_decision(pipeline_runs, tmp_path):
    chromium = _chromium()
    run = pipeline_runs.client.get_run(pipeline_runs.good.run_id)
    url = f"{pipeline_runs.server.url}/#/experiments/{pipeline_runs.experiment_id}/runs/{run.info.run_id}"

    dom = _browse(chromium, tmp_path / "profile", url, "--dump-dom").stdout
    assert run.info.run_name in dom
    for child in ("merge_dedup_split", "train_tokenizer", "train_neuroq", "evaluate", "register"):
        assert child in dom, f"child run {child} not on the page"
    assert "promotion.decision" in dom

    screenshot = tmp_path / "mlflow-run.png"
    result = _browse(chromium, tmp_path / "profile", url, f"--screenshot={screenshot}")
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, result.stderr[-2000:]
    if os.environ.get("NEUROQ_UPDATE_DOCS") == "1":
        shutil.copyfile(screenshot, DOCS / "mlflow-run.png")


def test_the_experiment_page_opens_on_training_runs_with_each_runs_name_and_headline_metric(pipeline_runs, tmp_path):
    chromium = _chromium()
    client = pipeline_runs.client
    assert client.get_experiment(pipeline_runs.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    url = f"{pipeline_runs.server.url}/{experiment_page(pipeline_runs.experiment_id)}"

    # The charts draw after the runs and their metrics have loaded: on a busy machine that takes longer.
    dom = _browse(chromium, tmp_path / "profile", url, "--dump-dom", wait_ms=40000).stdout
    assert "Model metrics" in dom and "Token Usage" not in dom  # the training layout, not GenAI's traces
    for run_id in (pipeline_runs.good.run_id, pipeline_runs.worse.run_id):
        assert client.get_run(run_id).info.run_name in dom
    for metric in ("val_bits_per_char", "parameters", "tokens_seen"):
        assert metric in dom, f"no chart of {metric}"

    screenshot = tmp_path / "mlflow-experiment.png"
    result = _browse(chromium, tmp_path / "profile", url, f"--screenshot={screenshot}", wait_ms=40000)
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, result.stderr[-2000:]
    if os.environ.get("NEUROQ_UPDATE_DOCS") == "1":
        shutil.copyfile(screenshot, DOCS / "mlflow-experiment.png")
