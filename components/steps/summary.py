"""The closing summary of a pipeline run: what was trained on what, how good it is, what the registry did, and
what to do next, in Markdown built from what the steps logged to MLflow.

The register step attaches it to the parent run (`summary.md`, and the run's description, which the MLflow UI
shows on the run's page) and `python -m pipelines.run local` prints the same text, so the terminal and the UI
cannot disagree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from components.params import PipelineParams
from components.steps.tracking import STEP_TAG

__all__ = ["DESCRIPTION_TAG", "SUMMARY_ARTIFACT", "curl_command", "experiment_page", "pipeline_summary"]

SUMMARY_ARTIFACT = "summary.md"
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description
SERVE_PORT = 5001
UI_PORT = 5000
_DROPPED = re.compile(r"(?:^|\.)(?:\w+_)?dropped\.(?P<reason>\w+)$")


def pipeline_summary(client: MlflowClient, parent_run_id: str, params: PipelineParams, *, decision: Any,
                     tracking_uri: str) -> str:
    """The summary of the pipeline run `parent_run_id`, whose register step just made `decision`.

    A line per step that ran under that run: steps run one by one (`mlflow run . -e <step>`) may leave some out.
    """
    parent = client.get_run(parent_run_id)
    steps = _step_runs(client, parent)
    lines = [f"## NeuroQ pipeline run `{parent.info.run_name}`", ""]
    if "merge_dedup_split" in steps:
        lines.append(f"- **Data**: {_data_line(steps['merge_dedup_split'].data.metrics, params)}")
    compared = [f"champion v{decision.previous_champion} {decision.champion_bits_per_char:.3f}"
                if decision.champion_bits_per_char is not None else "no champion before"]
    if "train_neuroq" in steps:
        train = steps["train_neuroq"]
        metrics = train.data.metrics
        lines.append(f"- **Model**: {params.mode}, {metrics['parameters'] / 1e6:.2f}M parameters (non-embedding), "
                     f"{int(metrics['steps'])} steps, {int(metrics['tokens_seen']):,} tokens seen, "
                     f"{(train.info.end_time - train.info.start_time) / 1000:.0f} s on {train.data.tags['device']}")
        compared.insert(0, f"unigram baseline {metrics['val_unigram_bits_per_char']:.3f}")
    alias = "now @champion" if decision.promoted else f"@champion stays v{decision.champion}"
    lines += [f"- **Quality**: validation {parent.data.metrics['val_bits_per_char']:.3f} bits/char "
              f"({'; '.join(compared)})",
              f"- **Registry**: `{decision.name}` version {decision.version} is @challenger, {alias}: {decision.reason}"]
    if "train_neuroq" in steps:
        lines.append(f"- **Loss curve**: {steps['train_neuroq'].info.artifact_uri}/plots/loss_curve.png")
    return "\n".join([
        *lines,
        "",
        "Next:",
        "",
        "```bash",
        f"mlflow ui --backend-store-uri {tracking_uri} --port {UI_PORT}   # then open:",
        f"#   http://127.0.0.1:{UI_PORT}/{experiment_page(parent.info.experiment_id)}",
        f"mlflow models serve --env-manager local -m models:/{decision.name}@champion -p {SERVE_PORT}",
        curl_command(),
        "# a bigger model on your own data, on a GPU when there is one:",
        "python -m pipelines.run local --data_sources huggingface --hf_path your.jsonl --n_embd 256 --n_layer 6 "
        "--seq_length 256 --max_steps 5000 --device auto",
        "```",
    ])


def experiment_page(experiment_id: str) -> str:
    """The UI route of the experiment's training runs compared in charts.

    MLflow 3.17's UI picks its GenAI or model-training layout from a workflow switch (the `workflowType` URL
    parameter, else the browser's last choice, GenAI by default) rather than from the experiment's kind tag.
    """
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"


def curl_command(port: int = SERVE_PORT) -> str:
    """A chat request to the served champion, as a user would type it."""
    body = '{"messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 32}'
    return f"curl -s localhost:{port}/invocations -H 'Content-Type: application/json' -d '{body}'"


def _step_runs(client: MlflowClient, parent: Run) -> dict[str, Run]:
    """The latest run of each step under `parent` (a retried step has one run per attempt)."""
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    return {run.data.tags[STEP_TAG]: run for run in children if STEP_TAG in run.data.tags}


def _data_line(metrics: Mapping[str, float], params: PipelineParams) -> str:
    read = sum(value for key, value in metrics.items() if key.endswith(".source_in"))
    dropped: Counter[str] = Counter()
    for key, value in metrics.items():
        if match := _DROPPED.search(key):
            dropped[match["reason"].replace("_", " ")] += int(value)
    reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.most_common()) or "none"
    return (f"{params.data_sources}: {int(read):,} documents read, {int(metrics['documents_out']):,} kept "
            f"({int(metrics['train_documents']):,} train / {int(metrics['validation_documents']):,} validation); "
            f"dropped: {reasons}")
