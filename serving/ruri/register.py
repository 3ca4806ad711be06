"""Log the Ruri pyfuncs to MLflow with the model files inside the artifacts, register them and point
an alias (`champion`, `challenger`, ...) at the new version.

The model is loaded once here (from a local folder, or from the Hugging Face hub when it is an id and
the hub is reachable), given its prompts and length limit, saved to a temporary folder with
sentence-transformers' own `save`, and that folder becomes the pyfunc artifact `model`: serving then
never needs the hub. Every file's sha256 and size go into the MLmodel metadata, and the server refuses to start
when one differs (base/integrity.py). The pyfunc is logged as code, as every served model is
(base/log_model.py): the entry module of its family (serving/embeddings/entry.py, serving/rerank/entry.py), with
the `serving` and `neuroq` packages as the model's code.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from serving.base.encoder import BI_ENCODER, CROSS_ENCODER, TransformerRunner, detect_kind, load_model
from serving.base.log_model import log_served_model

logger = logging.getLogger(__name__)

EMBED, RERANK = "embed", "rerank"
DEFAULT_MODELS = {EMBED: "cl-nagoya/ruri-v3-30m", RERANK: "cl-nagoya/ruri-v3-reranker-310m"}
DEFAULT_NAMES = {EMBED: "ruri-embed", RERANK: "ruri-rerank"}
ENTRIES = {EMBED: "serving.embeddings.entry", RERANK: "serving.rerank.entry"}
# The prefixes Ruri v3 was trained with (cl-nagoya/ruri-v3-* model cards), as sentence-transformers prompts.
RURI_V3_PROMPTS = {
    "query": "検索クエリ: ",
    "document": "検索文書: ",
    "classification": "トピック: ",
    "clustering": "トピック: ",
    "sts": "",
}
PROMPT_CHOICES = ("auto", "ruri", "model", "none")


class RegistryError(ValueError):
    pass


@dataclass
class RegisterConfig:
    task: str = EMBED  # embed | rerank
    model: str | None = None  # hub id or local folder; None: DEFAULT_MODELS[task]
    name: str | None = None  # registered model name; None: DEFAULT_NAMES[task]
    alias: str | None = None  # set on the new version, e.g. "challenger"
    scorer: str = "auto"  # rerank only: auto | cross-encoder | bi-encoder
    # auto: the model's own prompts if it has any non-empty one, else Ruri v3's;
    # ruri / model / none: exactly those
    prompts: str = "auto"
    max_seq_length: int | None = None  # None: the model's own
    served_name: str | None = None  # "model" in responses; None: the hub id, or `name` for a local folder
    experiment: str = "ruri-serving"

    def __post_init__(self):
        if self.task not in (EMBED, RERANK):
            raise RegistryError(f"task must be {EMBED!r} or {RERANK!r}, got {self.task!r}")
        if self.scorer not in ("auto", CROSS_ENCODER, BI_ENCODER):
            raise RegistryError(f"scorer must be auto, {CROSS_ENCODER} or {BI_ENCODER}, got {self.scorer!r}")
        if self.prompts not in PROMPT_CHOICES:
            raise RegistryError(f"prompts must be one of {', '.join(PROMPT_CHOICES)}, got {self.prompts!r}")
        self.model = self.model or DEFAULT_MODELS[self.task]
        self.name = self.name or DEFAULT_NAMES[self.task]


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str | None
    run_id: str
    model_uri: str  # models:/name/version


def resolve_source(model: str) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (or taken from the hub cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise RegistryError(f"{model} is not a model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model))
    except Exception as error:  # offline, unknown id, gated repo: all mean "give me a folder"
        raise RegistryError(
            f"{model} is not a local folder and could not be fetched from the Hugging Face hub ({error}); "
            "pass the path of a downloaded model"
        ) from error


def choose_prompts(model_prompts: dict[str, str] | None, choice: str) -> dict[str, str]:
    own = dict(model_prompts or {})
    if choice == "model" or (choice == "auto" and any(own.values())):
        return own
    if choice == "none":
        return {}
    return dict(RURI_V3_PROMPTS)


def prepare_model_dir(config: RegisterConfig, out_dir: Path) -> dict:
    """Load the source model, set prompts and length, save it to `out_dir`; returns what was chosen."""
    source = resolve_source(config.model)
    if config.task == EMBED:
        kind = BI_ENCODER
    else:
        kind = detect_kind(source) if config.scorer == "auto" else config.scorer
    model = load_model(source, kind, device="cpu")
    if config.max_seq_length is not None:
        model.max_seq_length = config.max_seq_length
    try:
        TransformerRunner(model, kind)  # what serving will build: fail now rather than when the server loads
    except ValueError as error:
        raise RegistryError(f"{config.model}: {error}") from error
    chosen = {"scorer": kind, "max_seq_length": int(model.max_seq_length)}
    if kind == BI_ENCODER:
        model.prompts = choose_prompts(model.prompts, config.prompts)
        chosen["prompt_texts"] = json.dumps(model.prompts, ensure_ascii=False)
        chosen["dimension"] = int(model.get_embedding_dimension())
        _check_pooling(model)
    model.save(str(out_dir))
    return chosen


def _check_pooling(model) -> None:
    # Requests mix prompts inside one batch, so pooling that excludes the prompt tokens (a
    # per-batch prompt length in sentence-transformers) cannot be served correctly.
    for module in model:
        if getattr(module, "include_prompt", True) is False:
            raise RegistryError("models whose pooling excludes prompt tokens (include_prompt=False) are not supported")


def pip_requirements() -> list[str]:
    # torch's local version label (+cpu, +cu12x) is not installable from PyPI; pin the release only.
    packages = ["mlflow", "sentence-transformers", "transformers", "tokenizers", "safetensors", "torch", "numpy"]
    return [f"{p}=={installed_version(p).split('+')[0]}" for p in packages]


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing.

    Not `mlflow.set_experiment`: it exports MLFLOW_EXPERIMENT_ID, which every later run of the caller's process,
    and every subprocess it starts (`mlflow run`, servers), would then inherit.
    """
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


def register(config: RegisterConfig) -> Registered:
    """Log, register and alias one model under the current tracking URI."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        chosen = prepare_model_dir(config, model_dir)
        served_name = config.served_name or (config.name if Path(config.model).expanduser().is_dir() else config.model)
        model_config = {"model_name": served_name, "task": config.task, "scorer": chosen["scorer"]}
        params = {k: v for k, v in {**asdict(config), **chosen}.items() if v is not None}
        experiment = experiment_id(config.experiment)
        with mlflow.start_run(experiment_id=experiment, run_name=f"register-{config.name}") as run:
            mlflow.log_params(params)
            info = log_served_model(
                ENTRIES[config.task],
                name="model",
                artifacts={"model": str(model_dir)},
                model_config=model_config,
                pip_requirements=pip_requirements(),
                registered_model_name=config.name,
            )
    version = str(info.registered_model_version)
    if config.alias:
        set_alias(config.name, config.alias, version)
    logger.info("registered %s version %s%s", config.name, version, f" as @{config.alias}" if config.alias else "")
    return Registered(config.name, version, config.alias, run.info.run_id, f"models:/{config.name}/{version}")


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)
