"""Evaluation and registration: score the model, then register it and apply the promotion policy."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.component import component


@component
def evaluate(params: dict, run: dict, model: Input[Model], val_data: Input[Dataset], metrics: Output[Metrics]):
    """Validation loss, perplexity and bits/char, plus sample generations; `metrics.metadata` carries them on."""
    from components.params import PipelineParams
    from components.steps import evaluation as steps
    from components.steps.base import RunRef

    results = steps.evaluate(PipelineParams.from_dict(params), RunRef(**run), model.path, val_data.path)
    for key, value in results.items():
        if isinstance(value, float):
            metrics.log_metric(key, value)
    metrics.metadata["validation_digest"] = results["validation_digest"]
    metrics.metadata["model"] = model.uri


@component
def register(
    params: dict,
    run: dict,
    model: Input[Model],
    train_data: Input[Dataset],
    val_data: Input[Dataset],
    metrics: Input[Metrics],
) -> str:
    """Log the NeuroQ pyfunc, register a new version, set @challenger and maybe @champion; close the run.

    Returns the promotion decision's reason, which is also the pipeline's output.
    """
    from components.params import PipelineParams
    from components.steps import evaluation as steps
    from components.steps.base import RunRef

    decision = steps.register(
        PipelineParams.from_dict(params),
        RunRef(**run),
        model.path,
        val_data.path,
        evaluation=dict(metrics.metadata),
        train_digest=str(train_data.metadata.get("content_digest", "")),
    )
    return decision.reason
