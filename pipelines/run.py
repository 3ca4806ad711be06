"""Run, compile or submit the NeuroQ pipeline.

    python -m pipelines.run local [--max_steps 50 --mode brain ...]      # kfp.local, no cluster
    python -m pipelines.run compile --out pipeline.yaml
    python -m pipelines.run submit --host https://kfp.example.com --tracking-uri http://mlflow.mlflow:5000 [...]

Every pipeline parameter is an option (`--name` or `--name-with-dashes`), default from `PipelineParams`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.params import PipelineParams, add_arguments, from_arguments
from neuroq.cli import run_command

DEFAULT_PIPELINE_ROOT = "runs/kfp"


def run_local(
    params: PipelineParams,
    *,
    pipeline_root: str | os.PathLike[str] = DEFAULT_PIPELINE_ROOT,
    tracking_uri: str = "",
    run_name: str = "",
    parent_run_id: str = "",
) -> str:
    """Run the whole DAG here with `kfp.local`'s SubprocessRunner; return the promotion decision's reason.

    Each step runs as a subprocess of this Python environment (which is the image contract's installation),
    with artifacts under `pipeline_root`. Raises RuntimeError naming the failed task when a step fails.
    """
    from kfp import local

    from components.steps import tracking
    from pipelines.pipeline import neuroq_pipeline

    # The subprocess runner uses this environment whatever image a task names, and GPU/CPU/memory requests
    # only mean something to a cluster: both warnings would fire for every task of every local run.
    warnings.filterwarnings("ignore", message=".*base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = neuroq_pipeline(
        **params.to_dict(),
        tracking_uri=tracking.resolve_tracking_uri(tracking_uri),
        run_name=run_name,
        parent_run_id=parent_run_id,
    )
    return str(task.output)


SAMPLE_PROMPTS = ("こんにちは", "日本の首都はどこですか？", "好きな本は何ですか？")


def champion_samples(params: PipelineParams, tracking_uri: str = "") -> list[str]:
    """Chat answers of `models:/<name>@champion` to a few prompts: what a user of the registry gets."""
    import mlflow

    from components.steps import tracking

    mlflow.set_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    model = mlflow.pyfunc.load_model(f"models:/{params.registered_model_name}@champion")
    answers = []
    for prompt in SAMPLE_PROMPTS:
        reply = model.predict({"messages": [{"role": "user", "content": prompt}], "max_tokens": 40, "seed": 0})
        answers.append(f"{prompt} -> {reply['choices'][0]['message']['content']}")
    return answers


def compile_pipeline(out: str | os.PathLike[str], *, checkpoint_pvc: str = "") -> Path:
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(checkpoint_pvc), package_path=str(path))
    return path


def submit(
    params: PipelineParams, *, host: str, tracking_uri: str, experiment: str, run_name: str, image: str,
    checkpoint_pvc: str = "",
) -> Any:
    """Submit a run to a Kubeflow Pipelines host; the pods log to `tracking_uri` (an MLflow server)."""
    import kfp

    from pipelines.pipeline import CHECKPOINT_MOUNT, build_pipeline

    client = kfp.Client(host=host)
    arguments = {**params.to_dict(), "tracking_uri": tracking_uri, "run_name": run_name}
    if checkpoint_pvc and not params.checkpoint_dir:
        arguments["checkpoint_dir"] = CHECKPOINT_MOUNT
    if image:
        arguments["image"] = image
    return client.create_run_from_pipeline_func(
        build_pipeline(checkpoint_pvc), arguments=arguments, experiment_name=experiment, run_name=run_name or None
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    local_cmd = commands.add_parser("local", help="run the whole pipeline here with kfp.local (no cluster)")
    local_cmd.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT, help="where step artifacts go")
    local_cmd.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                           "else sqlite:///<cwd>/mlflow.db)")
    local_cmd.add_argument("--run-name", default="", help="name of the parent MLflow run")
    add_arguments(local_cmd)

    pvc_help = ("an existing PersistentVolumeClaim mounted on the train task at /mnt/neuroq-checkpoints, which "
                "becomes checkpoint_dir's default: a retried train task resumes from its last checkpoint there")
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    compile_cmd.add_argument("--out", default="pipeline.yaml")
    compile_cmd.add_argument("--checkpoint-pvc", default="", metavar="NAME", help=pvc_help)

    submit_cmd = commands.add_parser("submit", help="submit a run to a Kubeflow Pipelines host")
    submit_cmd.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com/pipeline")
    submit_cmd.add_argument("--tracking-uri", required=True, help="MLflow server the pods can reach")
    submit_cmd.add_argument("--experiment", default="neuroq", help="KFP experiment")
    submit_cmd.add_argument("--run-name", default="")
    submit_cmd.add_argument("--image", default="", help="image with this project installed (default: the "
                            "pipeline's)")
    submit_cmd.add_argument("--checkpoint-pvc", default="", metavar="NAME", help=pvc_help)
    add_arguments(submit_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "compile":
        print(compile_pipeline(args.out, checkpoint_pvc=args.checkpoint_pvc))
    elif args.command == "local":
        params = from_arguments(args)
        print(run_local(params, pipeline_root=args.pipeline_root, tracking_uri=args.tracking_uri,
                        run_name=args.run_name))
        print(f"models:/{params.registered_model_name}@champion answers:")
        for line in champion_samples(params, args.tracking_uri):
            print(f"  {line}")
    else:
        result = submit(from_arguments(args), host=args.host, tracking_uri=args.tracking_uri,
                        experiment=args.experiment, run_name=args.run_name, image=args.image,
                        checkpoint_pvc=args.checkpoint_pvc)
        print(f"submitted run {result.run_id}")

if __name__ == "__main__":
    sys.exit(main())
