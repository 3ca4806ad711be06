"""Run, compile or submit the NeuroQ pipeline.

    python -m pipelines.run local [--max_steps 50 --mode brain ...]      # kfp.local, no cluster
    python -m pipelines.run compile --out pipeline.yaml
    python -m pipelines.run submit --host https://kfp.example.com --tracking-uri http://mlflow.mlflow:5000 [...]

Every pipeline parameter is an option (`--name` or `--name-with-dashes`), default from `PipelineParams`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.params import PipelineParams, add_arguments, from_arguments
from neuroq.cli import run_command

DEFAULT_PIPELINE_ROOT = "runs/kfp"
VERBOSE_ENV = "NEUROQ_VERBOSE"


@dataclass(frozen=True)
class LocalRun:
    reason: str  # the promotion decision's reason: the pipeline's output
    parent_run_id: str
    tracking_uri: str
    log_dir: Path  # every task's full log


def run_local(
    params: PipelineParams,
    *,
    pipeline_root: str | os.PathLike[str] = DEFAULT_PIPELINE_ROOT,
    tracking_uri: str = "",
    run_name: str = "",
    parent_run_id: str = "",
    verbose: bool = False,
) -> LocalRun:
    """Run the pipeline here with `kfp.local`'s SubprocessRunner, built with the tasks `params` use
    (`pipelines.pipeline.pipeline_for`).

    Each step runs as a subprocess of this Python environment (which is the image contract's installation),
    with artifacts under `pipeline_root`. The terminal gets one line per step (`console.StepConsole`; everything
    with `verbose`), the run folder every task's log. Raises RuntimeError naming the failed task when a step fails.
    """
    from kfp import local

    from components.steps import tracking
    from pipelines.console import StepConsole
    from pipelines.pipeline import pipeline_for

    # The subprocess runner uses this environment whatever image a task names, and GPU/CPU/memory requests
    # only mean something to a cluster: both warnings would fire for every task of every local run.
    warnings.filterwarnings("ignore", message=".*base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    # Steps that only read their inputs (the ingests) reuse a previous run's outputs through kfp.local's cache; the
    # steps that log to MLflow reuse theirs through `reuse_dir` (components.steps.base.reuse_or_run).
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True,
               cache_root=str(root / "cache"))
    if not params.reuse_dir:
        params = dataclasses.replace(params, reuse_dir=str(root / "reuse"))
    with StepConsole(root / f".logs-{os.getpid()}", sys.stdout, verbose=verbose).capturing() as console:
        task = pipeline_for(params)(**params.to_dict(), tracking_uri=uri, run_name=run_name,
                                    parent_run_id=parent_run_id)
    run = console.output("start-run")["parameterValues"]["run"]
    return LocalRun(str(task.output), run["parent_run_id"], uri, console.log_dir)


def run_summary(run: LocalRun) -> str:
    """The summary the register step attached to the pipeline's parent run (components.steps.summary)."""
    from mlflow.tracking import MlflowClient

    from components.steps.summary import DESCRIPTION_TAG

    return MlflowClient(run.tracking_uri).get_run(run.parent_run_id).data.tags[DESCRIPTION_TAG]


def compile_pipeline(out: str | os.PathLike[str], *, checkpoint_pvc: str = "", parallelism: int = 0) -> Path:
    from kfp import compiler

    from pipelines.pipeline import DEFAULT_PARALLELISM, build_pipeline

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(checkpoint_pvc, parallelism or DEFAULT_PARALLELISM),
                                package_path=str(path))
    return path


def submit(
    params: PipelineParams, *, host: str, tracking_uri: str, experiment: str, run_name: str, image: str,
    checkpoint_pvc: str = "", parallelism: int = 0,
) -> Any:
    """Submit a run to a Kubeflow Pipelines host; the pods log to `tracking_uri` (an MLflow server)."""
    import kfp

    from pipelines.pipeline import CHECKPOINT_MOUNT, DEFAULT_PARALLELISM, build_pipeline

    client = kfp.Client(host=host)
    arguments = {**params.to_dict(), "tracking_uri": tracking_uri, "run_name": run_name}
    if checkpoint_pvc and not params.checkpoint_dir:
        arguments["checkpoint_dir"] = CHECKPOINT_MOUNT
    if image:
        arguments["image"] = image
    return client.create_run_from_pipeline_func(
        build_pipeline(checkpoint_pvc, parallelism or DEFAULT_PARALLELISM), arguments=arguments, experiment_name=experiment, run_name=run_name or None
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--parallelism must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    local_cmd = commands.add_parser("local", help="run the whole pipeline here with kfp.local (no cluster)")
    local_cmd.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT, help="where step artifacts go")
    local_cmd.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                           "else sqlite:///<cwd>/mlflow.db)")
    local_cmd.add_argument("--run-name", default="", help="name of the parent MLflow run (default: mode, size, "
                           "data and time)")
    local_cmd.add_argument("-v", "--verbose", action="store_true", default=bool(os.environ.get(VERBOSE_ENV)),
                           help=f"print every task's full log here too (or set {VERBOSE_ENV}=1)")
    add_arguments(local_cmd)

    pvc_help = ("an existing PersistentVolumeClaim mounted on the train task at /mnt/neuroq-checkpoints, which "
                "becomes checkpoint_dir's default: a retried train task resumes from its last checkpoint there")
    parallelism_help = ("Common Crawl shard tasks running at once (default 8); KFP fixes it at compile time, "
                        "cc_shards (a pipeline parameter) says how many there are")
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    compile_cmd.add_argument("--out", default="pipeline.yaml")
    compile_cmd.add_argument("--checkpoint-pvc", default="", metavar="NAME", help=pvc_help)
    compile_cmd.add_argument("--parallelism", type=_positive, default=0, metavar="N", help=parallelism_help)

    submit_cmd = commands.add_parser("submit", help="submit a run to a Kubeflow Pipelines host")
    submit_cmd.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com/pipeline")
    submit_cmd.add_argument("--tracking-uri", required=True, help="MLflow server the pods can reach")
    submit_cmd.add_argument("--experiment", default="neuroq", help="KFP experiment")
    submit_cmd.add_argument("--run-name", default="")
    submit_cmd.add_argument("--image", default="", help="image with this project installed (default: the "
                            "pipeline's)")
    submit_cmd.add_argument("--checkpoint-pvc", default="", metavar="NAME", help=pvc_help)
    submit_cmd.add_argument("--parallelism", type=_positive, default=0, metavar="N", help=parallelism_help)
    add_arguments(submit_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Warnings and errors only: the steps' INFO lines are in their logs, and the console shows what they did.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "compile":
        print(compile_pipeline(args.out, checkpoint_pvc=args.checkpoint_pvc, parallelism=args.parallelism))
    elif args.command == "local":
        params = from_arguments(args)
        print(f"NeuroQ pipeline, {params.mode} {params.n_layer}x{params.n_embd} on {params.data_sources}, "
              f"{params.max_steps} steps (kfp.local; -v shows every log line):", flush=True)
        run = run_local(params, pipeline_root=args.pipeline_root, tracking_uri=args.tracking_uri,
                        run_name=args.run_name, verbose=args.verbose)
        print(f"\nEvery step's full log: {run.log_dir}\n")
        print(run_summary(run))
    else:
        result = submit(from_arguments(args), host=args.host, tracking_uri=args.tracking_uri,
                        experiment=args.experiment, run_name=args.run_name, image=args.image,
                        checkpoint_pvc=args.checkpoint_pvc, parallelism=args.parallelism)
        print(f"submitted run {result.run_id}")


if __name__ == "__main__":
    sys.exit(main())
