"""Training components: the tokenizer, then the model."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.component import component


@component
def train_tokenizer(params: dict, run: dict, train_data: Input[Dataset], tokenizer: Output[Model]):
    """Train the SentencePiece BPE tokenizer (byte fallback, reserved chat ids) on the training split."""
    from components.params import PipelineParams
    from components.steps import training as steps
    from components.steps.base import RunRef

    info = steps.train_tokenizer(PipelineParams.from_dict(params), RunRef(**run), train_data.path, tokenizer.path)
    tokenizer.metadata.update({**info, "train_data": train_data.uri})


@component
def train_neuroq(
    params: dict,
    run: dict,
    train_data: Input[Dataset],
    val_data: Input[Dataset],
    tokenizer: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train NeuroQ; loss curves go to the step's MLflow run, the exported checkpoint to `model`."""
    from components.params import PipelineParams
    from components.steps import training as steps
    from components.steps.base import RunRef

    summary = steps.train_neuroq(
        PipelineParams.from_dict(params),
        RunRef(**run),
        train_data.path,
        val_data.path,
        tokenizer.path,
        model.path,
    )
    model.metadata.update(
        {"train_data": train_data.uri, "val_data": val_data.uri, "tokenizer": tokenizer.uri, "mode": params["mode"]}
    )
    for key, value in summary.items():
        if value is not None:
            metrics.log_metric(key, float(value))
