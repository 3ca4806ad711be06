"""`mlflow run . -e main`: the whole pipeline, locally, under the run `mlflow run` created.

That run becomes the pipeline's parent run, so `mlflow run` and a plain `python -m pipelines.run local` give
the same run tree. MLFLOW_RUN_ID is taken out of the environment before the steps start: a step that inherited
it would resume the parent run instead of opening its own child run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from components.params import add_arguments, from_arguments
from neuroq.cli import run_command
from pipelines.run import DEFAULT_PIPELINE_ROOT, run_local, run_summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlflow run . -e main", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline_root", "--pipeline-root", default=DEFAULT_PIPELINE_ROOT)
    add_arguments(parser)
    args = parser.parse_args(argv)
    parent_run_id = os.environ.pop("MLFLOW_RUN_ID", "")

    def run() -> None:
        print(run_summary(run_local(from_arguments(args), pipeline_root=args.pipeline_root,
                                    parent_run_id=parent_run_id)))

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
