"""`mlflow run . -e <step>`: one pipeline step on folders, logging into the run `mlflow run` created.

    python -m mlflow_project.steps train_tokenizer --train_data runs/mlproject/train --out tokenizer.model

The folder options are the step's inputs and outputs (the MLproject declares them with defaults that chain the
steps under runs/mlproject/); every other option is a pipeline parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.params import PipelineParams, add_arguments, from_arguments
from components.steps import base, data, evaluation, training, tracking
from neuroq.cli import run_command


def _run_ref() -> base.RunRef:
    # No parent: tracking.step_run then logs into MLFLOW_RUN_ID, the run `mlflow run` made for this step.
    return base.RunRef(tracking.resolve_tracking_uri())


def _log_manifest(manifest: dict[str, Any]) -> None:
    """The ingest steps log nothing themselves (they are cacheable in KFP); here a run exists for them."""
    if os.environ.get("MLFLOW_RUN_ID"):
        import mlflow

        mlflow.set_tracking_uri(tracking.resolve_tracking_uri())
        with mlflow.start_run():
            mlflow.log_dict(manifest, "data/manifest.json")


def _ingest_hf(params: PipelineParams, a: argparse.Namespace) -> Any:
    manifest = data.ingest_hf(params, a.out)
    _log_manifest(manifest)
    return data.lineage(manifest)


def _ingest_common_crawl(params: PipelineParams, a: argparse.Namespace) -> Any:
    manifest = data.ingest_common_crawl(params, a.out)
    _log_manifest(manifest)
    return data.lineage(manifest)


def _merge(params: PipelineParams, a: argparse.Namespace) -> Any:
    train, val = data.merge_dedup_split(params, _run_ref(), a.sources.split(","), a.train_out, a.val_out)
    return {"train": data.lineage(train), "validation": data.lineage(val)}


def _train_tokenizer(params: PipelineParams, a: argparse.Namespace) -> Any:
    return training.train_tokenizer(params, _run_ref(), a.train_data, a.out)


def _train(params: PipelineParams, a: argparse.Namespace) -> Any:
    return training.train_neuroq(params, _run_ref(), a.train_data, a.val_data, a.tokenizer, a.out)


def _evaluate(params: PipelineParams, a: argparse.Namespace) -> Any:
    results = evaluation.evaluate(params, _run_ref(), a.model, a.val_data)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def _register(params: PipelineParams, a: argparse.Namespace) -> Any:
    evaluation = json.loads(Path(a.evaluation).read_text(encoding="utf-8"))
    train_manifest = json.loads((Path(a.train_data) / "manifest.json").read_text(encoding="utf-8"))
    decision = evaluation.register(
        params, _run_ref(), a.model, a.val_data, evaluation=evaluation, train_digest=train_manifest["content_digest"]
    )
    return decision.reason


# step -> (folder options, function)
STEPS: dict[str, tuple[tuple[str, ...], Callable[[PipelineParams, argparse.Namespace], Any]]] = {
    "ingest_hf": (("out",), _ingest_hf),
    "ingest_common_crawl": (("out",), _ingest_common_crawl),
    "merge_dedup_split": (("sources", "train_out", "val_out"), _merge),
    "train_tokenizer": (("train_data", "out"), _train_tokenizer),
    "train": (("train_data", "val_data", "tokenizer", "out"), _train),
    "evaluate": (("model", "val_data", "out"), _evaluate),
    "register": (("model", "train_data", "val_data", "evaluation"), _register),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlflow_project.steps", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="step", required=True)
    for name, (folders, _) in STEPS.items():
        sub = commands.add_parser(name)
        for folder in folders:
            sub.add_argument(f"--{folder}", required=True)
        add_arguments(sub)
    args = parser.parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    result = STEPS[args.step][1](from_arguments(args), args)
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
