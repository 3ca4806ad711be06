"""The first step: validate the parameters and open the pipeline's parent MLflow run."""

from typing import NamedTuple

from components.component import component


@component
def start_run(
    params: dict, tracking_uri: str, run_name: str, parent_run_id: str
) -> NamedTuple("RunOutputs", [("params", dict), ("run", dict)]):
    """Check every parameter (a bad value fails here, before any data is read) and open the parent run.

    `params` round-trips through `PipelineParams`, so later steps receive a complete, validated dict; `run`
    (tracking URI made absolute, parent run id) is what every later step needs to log under the parent.
    """
    from collections import namedtuple

    from components.params import PipelineParams
    from components.steps.base import start

    validated = PipelineParams.from_dict(params)
    run = start(validated, tracking_uri=tracking_uri, run_name=run_name, parent_run_id=parent_run_id)
    return namedtuple("RunOutputs", ["params", "run"])(validated.to_dict(), run.to_dict())
