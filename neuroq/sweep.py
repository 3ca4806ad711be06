"""A hyperparameter sweep over the training knobs and model options at a given size and token budget (Optuna, no
MLflow).

One objective serves every runner: :func:`run_trial` trains one set of settings (a dict, :data:`KNOBS`) for
``token_budget`` tokens and returns validation bits per character, reporting the validation curve on the way
(``report(eval_index, bits_per_char)``, which may raise to stop the trial). :func:`optuna_objective` wraps it
for ``study.optimize`` (settings from :func:`suggest`, reports to ``trial.report``, ``optuna.TrialPruned`` when
the pruner says so); the MLflow-tracked sweep (``components.steps.sweep``) adds one MLflow run per trial around
the same call, and a Katib trial (``deploy/k8s/katib``) calls it with its settings from the command line.

Every trial sees the same tokens: the settings change the batch size, so the number of optimizer steps is
``token_budget // (batch_size * context)``, and the warmup is a fraction of those steps. Validation is the whole
held-out split at every evaluation (not a batch-size-dependent sample), scored as mean token loss x tokens per
character / ln 2, so trials with different batch sizes compare on the same text.

Data (:func:`prepare_data`): documents from .jsonl(.gz) files are split by a group field (Aozora's ``author``),
so validation authors are unseen in training; a record without the field is its own group. The tokenizer is
trained on the training split; the prepared folder is reused by every trial and by later runs with the same
inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neuroq.errors import ConfigError, DataError
from neuroq.model import NeuroQConfig
from neuroq.recipe import Recipe
from neuroq.shards import PackedBlocks, write_token_shards
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from neuroq.train import MetricsCallback, TrainConfig, train
from neuroq.validation import is_int, is_number, require

if TYPE_CHECKING:
    import optuna

__all__ = ["KNOBS", "OPTION_DEFAULTS", "SweepConfig", "SweepData", "TrialResult", "baseline_settings", "create_study",
           "held_out_groups", "optuna_objective", "prepare_data", "recipe_from", "run_trial", "steps_for", "suggest",
           "train_config"]

logger = logging.getLogger(__name__)

# The searched knobs: name -> how Optuna draws it. Ranges bracket what small decoders train well with; the
# categorical ones are the values worth telling apart at a few dozen trials.
KNOBS: dict[str, tuple[str, Any]] = {
    "lr": ("log", (3e-4, 1e-2)),
    "min_lr_ratio": ("log", (0.01, 0.5)),  # min_lr = lr * ratio, the cosine's floor
    "warmup_fraction": ("float", (0.0, 0.15)),  # of the run's optimizer steps
    "weight_decay": ("log", (1e-3, 0.3)),  # on matrices and embeddings (NeuroQ.configure_optimizer)
    "beta1": ("float", (0.8, 0.95)),
    "beta2": ("categorical", (0.95, 0.98, 0.99, 0.999)),
    "batch_size": ("categorical", (8, 16, 32, 64)),
    "dropout": ("float", (0.0, 0.2)),
    "grad_clip": ("categorical", (0.0, 0.5, 1.0, 2.0)),  # 0 = no clipping
    # The model options (NeuroQConfig; z_loss is TrainConfig's), each either off, as today's model has it, or on.
    "position": ("categorical", ("learned", "rope")),
    "norm": ("categorical", ("layernorm", "rmsnorm")),
    "tie_embeddings": ("categorical", (False, True)),
    "zero_init_residual": ("categorical", (False, True)),
    "z_loss": ("categorical", (0.0, 1e-4)),
    "logit_softcap": ("categorical", (0.0, 30.0)),
}
# Each model option's default (NeuroQConfig's, TrainConfig's): trial 0's, and what a trial command that does not
# name the option trains with.
OPTION_DEFAULTS: dict[str, Any] = {
    "position": NeuroQConfig.position, "norm": NeuroQConfig.norm, "tie_embeddings": NeuroQConfig.tie_embeddings,
    "zero_init_residual": NeuroQConfig.zero_init_residual, "z_loss": TrainConfig.z_loss,
    "logit_softcap": NeuroQConfig.logit_softcap,
}
_MODEL_OPTIONS = ("position", "norm", "tie_embeddings", "zero_init_residual", "logit_softcap")


@dataclass
class SweepConfig:
    """What to sweep at: the model size, the token budget per trial, the data, and the study.

    ``corpus`` is .jsonl(.gz) files or folders ("" = the bundled dialogues); ``group_field`` is the record field
    documents are split by. ``val_chars`` caps the held-out text scored at every evaluation (0 = all of it).
    ``evals`` validations per trial give the pruner its curve. ``out_dir`` holds the prepared data, the Optuna
    study (``study.db``: a sweep stopped and started again continues it) and each trial's checkpoint.
    """

    corpus: str = ""
    out_dir: str = "runs/sweep"
    study_name: str = "neuroq-sweep"
    n_trials: int = 20  # trials this call runs (a study continued later adds its own)
    timeout_s: float = 0.0  # start no new trial after this many seconds (0 = no limit)
    token_budget: int = 4_100_000
    mode: Literal["layered", "brain", "gpt"] = "layered"
    n_embd: int = 128
    n_ff: int = 256
    n_head: int = 4
    n_layer: int = 4
    context: int = 128
    vocab_size: int = 8000
    group_field: str = "author"
    val_fraction: float = 0.1
    val_chars: int = 200_000
    evals: int = 8
    startup_trials: int = 5  # random trials before TPE models the results
    prune_after: int = 2  # finished trials before the median pruner may stop one
    seed: int = 1337
    device: str = "auto"
    baseline: bool = True  # first trial: today's TrainConfig defaults, as the sweep's reference row

    def __post_init__(self) -> None:
        for name in ("n_trials", "token_budget", "n_embd", "n_ff", "n_head", "n_layer", "context", "vocab_size",
                     "evals"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"SweepConfig.{name}", "an integer >= 1", value)
        for name in ("val_chars", "startup_trials", "prune_after"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, f"SweepConfig.{name}", "an integer >= 0", value)
        require(is_number(self.timeout_s) and self.timeout_s >= 0, "SweepConfig.timeout_s", "a number >= 0",
                self.timeout_s)
        require(is_number(self.val_fraction) and 0 < self.val_fraction < 1, "SweepConfig.val_fraction",
                "a number in (0, 1)", self.val_fraction)
        self.model_config(self.vocab_size)  # the size must make a valid model

    def model_config(self, vocab_size: int, dropout: float = 0.0, **options: Any) -> NeuroQConfig:
        """The model at the sweep's size; ``options`` are NeuroQConfig's model options (position, norm, ...)."""
        return NeuroQConfig(mode=self.mode, vocab_size=vocab_size, n_embd=self.n_embd, n_ff=self.n_ff,
                            n_head=self.n_head, n_layer=self.n_layer, max_seq_len=self.context, dropout=dropout,
                            **options)

    def size(self) -> str:
        return f"{self.mode} E{self.n_embd} F{self.n_ff} H{self.n_head} L{self.n_layer} T{self.context}"


# ------------------------------------------------------------------------------------------------ data


@dataclass
class SweepData:
    tokenizer: NeuroQTokenizer
    train_blocks: PackedBlocks
    val_blocks: PackedBlocks
    train_groups: int
    val_groups: int

    @property
    def tokens_per_char(self) -> float:
        """Validation tokens per raw character: turns a mean token loss into bits per character."""
        return self.val_blocks.n_tokens / self.val_blocks.n_chars


def _records(corpus: str, group_field: str) -> Iterator[tuple[str, str]]:
    """(group, text) of every non-empty record; a record without ``group_field`` is its own group."""
    if not corpus:
        from neuroq.corpus import bundled_dialogues

        yield from ((text, text) for text in bundled_dialogues())
        return
    root = Path(corpus)
    files = sorted(p for p in root.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz"))) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"corpus {corpus} has no .jsonl(.gz) file: give a file or a folder of them")
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number} is not JSON ({exc})") from None
                text = record.get("text") or ""
                if text:
                    yield str(record.get(group_field) or text), text


def _data_key(cfg: SweepConfig) -> dict[str, Any]:
    files = []
    if cfg.corpus:
        root = Path(cfg.corpus)
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                stat = path.stat()
                files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return {"files": files, "group_field": cfg.group_field, "val_fraction": cfg.val_fraction,
            "val_chars": cfg.val_chars, "vocab_size": cfg.vocab_size, "seed": cfg.seed}


def prepare_data(cfg: SweepConfig) -> SweepData:
    """Split by group, train the tokenizer on the training side, write token shards; reused when already there."""
    key = _data_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cfg.out_dir) / "data" / digest
    if not (folder / "key.json").is_file():
        records = list(_records(cfg.corpus, cfg.group_field))
        held_out = held_out_groups(records, cfg)
        train_docs = [text for group, text in records if group not in held_out]
        val_docs = [text for group, text in records if group in held_out]
        if not train_docs or not val_docs:
            raise ConfigError(f"splitting the corpus by {cfg.group_field!r} at val_fraction {cfg.val_fraction} left "
                              "one side empty: give more than one group, or change val_fraction")
        groups = {True: held_out, False: {group for group, _ in records} - held_out}
        val_docs = _cap(val_docs, cfg.val_chars)
        # Katib trials may prepare the same data at once on a shared volume: each writes aside, the first rename wins.
        staging = folder.with_name(f".{digest}.{uuid.uuid4().hex}")
        tok_config = TokenizerConfig(vocab_size=cfg.vocab_size, seed=cfg.seed, hard_vocab_limit=False)
        tokenizer = NeuroQTokenizer.train(train_docs, tok_config)
        tokenizer.save(staging / "tokenizer.model")
        write_token_shards(train_docs, tokenizer, staging / "train")
        write_token_shards(val_docs, tokenizer, staging / "val")
        counts = {"train_groups": len(groups[False]), "val_groups": len(groups[True])}
        (staging / "key.json").write_text(json.dumps({**key, **counts}, indent=2), encoding="utf-8")
        try:
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    saved = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    data = SweepData(NeuroQTokenizer.load(folder / "tokenizer.model"), PackedBlocks(folder / "train", cfg.context),
                     PackedBlocks(folder / "val", cfg.context), saved["train_groups"], saved["val_groups"])
    logger.info("sweep data %s: %d training groups (%d tokens), %d held-out groups (%d tokens, %d characters)",
                folder, data.train_groups, data.train_blocks.n_tokens, data.val_groups, data.val_blocks.n_tokens,
                data.val_blocks.n_chars)
    return data


def held_out_groups(records: list[tuple[str, str]], cfg: SweepConfig) -> set[str]:
    """Groups in the order of a seeded hash of their name, taken until they hold ``val_fraction`` of the characters.

    Counting characters, not groups: Aozora's authors range from one short story to a million characters, and a
    draw of a tenth of the authors can hold well under 1% of the text.
    """
    sizes: dict[str, int] = {}
    for group, text in records:
        sizes[group] = sizes.get(group, 0) + len(text)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{cfg.seed}:{g}".encode()).digest())
    held, chars, target = set(), 0, cfg.val_fraction * sum(sizes.values())
    for group in order[:-1]:  # the last group always trains
        if chars >= target:
            break
        held.add(group)
        chars += sizes[group]
    return held


def _cap(docs: list[str], max_chars: int) -> list[str]:
    """About ``max_chars`` characters with an equal share from every document's start (all of them for 0), so
    that every held-out group is scored, not only the first one."""
    if not max_chars or sum(len(d) for d in docs) <= max_chars:
        return docs
    share = max(1, max_chars // len(docs))
    return [doc[:share] for doc in docs]


# ------------------------------------------------------------------------------------------------ one trial


def steps_for(cfg: SweepConfig, batch_size: int) -> int:
    return max(1, cfg.token_budget // (batch_size * cfg.context))


def baseline_settings(cfg: SweepConfig) -> dict[str, Any]:
    """Today's defaults (TrainConfig, NeuroQConfig) as sweep settings: the reference every trial is measured by."""
    defaults = TrainConfig()
    assert defaults.min_lr is not None
    steps = steps_for(cfg, defaults.batch_size)
    return {"lr": defaults.lr, "min_lr_ratio": defaults.min_lr / defaults.lr,
            "warmup_fraction": min(1.0, defaults.warmup_steps / steps), "weight_decay": defaults.weight_decay,
            "beta1": defaults.betas[0], "beta2": defaults.betas[1], "batch_size": defaults.batch_size,
            "dropout": NeuroQConfig.dropout, "grad_clip": defaults.grad_clip, **OPTION_DEFAULTS}


def train_config(cfg: SweepConfig, settings: Mapping[str, Any], vocab_size: int, out_dir: str) -> TrainConfig:
    """The TrainConfig of one trial: the settings at the sweep's size, with steps from the token budget."""
    unknown = set(settings) - set(KNOBS)
    missing = set(KNOBS) - set(settings)
    if unknown or missing:
        raise ConfigError(f"sweep settings must name exactly {', '.join(KNOBS)}; unknown: {sorted(unknown)}, "
                          f"missing: {sorted(missing)}")
    batch = int(settings["batch_size"])
    steps = steps_for(cfg, batch)
    lr = float(settings["lr"])
    return TrainConfig(
        model=cfg.model_config(vocab_size, float(settings["dropout"]), **{k: settings[k] for k in _MODEL_OPTIONS}),
        out_dir=out_dir, max_steps=steps, batch_size=batch, lr=lr, min_lr=lr * float(settings["min_lr_ratio"]),
        warmup_steps=min(steps - 1, round(float(settings["warmup_fraction"]) * steps)),
        weight_decay=float(settings["weight_decay"]), betas=(float(settings["beta1"]), float(settings["beta2"])),
        grad_clip=float(settings["grad_clip"]), z_loss=float(settings["z_loss"]),
        # Every validation scores the whole held-out split, so that batch size does not change what is scored.
        eval_interval=max(1, steps // cfg.evals), eval_batches=None, ckpt_interval=0,
        log_interval=max(1, steps // 50), seed=cfg.seed, device=cfg.device, progress=False,
    )


@dataclass
class TrialResult:
    val_bits_per_char: float
    best_val_bits_per_char: float
    tokens_per_s: float
    steps: int
    tokens_seen: int
    train_config: TrainConfig


def run_trial(cfg: SweepConfig, settings: Mapping[str, Any], data: SweepData, out_dir: str, *,
              report: Callable[[int, float], None] | None = None,
              callbacks: tuple[MetricsCallback, ...] = ()) -> TrialResult:
    """Train ``settings`` for the sweep's budget; ``report(eval_index, val_bits_per_char)`` after each validation.

    The objective every runner shares. ``report`` may raise (``optuna.TrialPruned``) to stop training there;
    ``callbacks`` get the training loop's metrics, ``val_bits_per_char`` included.
    """
    config = train_config(cfg, settings, data.tokenizer.vocab_size, out_dir)
    to_bits = data.tokens_per_char / math.log(2)
    evals = 0

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        nonlocal evals
        if "val_loss" in metrics:
            metrics = {**metrics, "val_bits_per_char": metrics["val_loss"] * to_bits}
        for callback in callbacks:
            callback(metrics, step)
        if "val_loss" in metrics and report is not None:
            evals += 1
            report(evals, metrics["val_bits_per_char"])

    result = train(config, data.train_blocks, data.val_blocks, data.tokenizer, callbacks=(on_metrics,))
    assert result.final_val_loss is not None and result.best_val_loss is not None
    return TrialResult(result.final_val_loss * to_bits, result.best_val_loss * to_bits, result.tokens_per_s,
                       result.steps, result.tokens_seen, config)


def recipe_from(cfg: SweepConfig, name: str, config: TrainConfig, *, notes: Mapping[str, Any] = ()) -> Recipe:
    """A trial's training settings as a named recipe, with the size and budget they were found at."""
    knobs = ("lr", "min_lr", "warmup_steps", "max_steps", "batch_size", "weight_decay", "betas", "grad_clip", "z_loss")
    train_values = {k: getattr(config, k) for k in knobs}
    train_values["betas"] = list(config.betas)
    model_values = {k: getattr(config.model, k) for k in ("dropout", *_MODEL_OPTIONS)}
    return Recipe(name=name, train=train_values, model=model_values,
                  notes={"size": cfg.size(), "token_budget": cfg.token_budget, "corpus": cfg.corpus or "bundled",
                         **dict(notes)})


# ------------------------------------------------------------------------------------------------ Optuna


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """One set of settings drawn from :data:`KNOBS`."""
    settings: dict[str, Any] = {}
    for name, (kind, spec) in KNOBS.items():
        if kind == "categorical":
            settings[name] = trial.suggest_categorical(name, list(spec))
        else:
            settings[name] = trial.suggest_float(name, *spec, log=kind == "log")
    return settings


def optuna_objective(cfg: SweepConfig, data: SweepData,
                     run: Callable[[optuna.Trial, dict[str, Any], Callable[[int, float], None]], TrialResult] | None = None
                     ) -> Callable[[optuna.Trial], float]:
    """``study.optimize``'s objective: suggest, train, report the validation curve, prune when the pruner says.

    ``run(trial, settings, report)`` replaces the plain call of :func:`run_trial` (the MLflow sweep wraps it in
    the trial's MLflow run); it must pass ``report`` on.
    """
    import optuna

    def report_to(trial: optuna.Trial) -> Callable[[int, float], None]:
        def report(index: int, value: float) -> None:
            trial.report(value, index)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val bits/char {value:.4f} at evaluation {index} is worse than the median")
        return report

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial)
        report = report_to(trial)
        if run is not None:
            result = run(trial, settings, report)
        else:
            result = run_trial(cfg, settings, data, str(Path(cfg.out_dir) / "trials" / str(trial.number)),
                               report=report)
        trial.set_user_attr("tokens_per_s", result.tokens_per_s)
        trial.set_user_attr("train_config", result.train_config.to_dict())
        return result.val_bits_per_char

    return objective


def create_study(cfg: SweepConfig) -> optuna.Study:
    """The sweep's study in ``out_dir/study.db`` (continued when it exists), TPE sampler, median pruner."""
    import optuna

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(Path(cfg.out_dir) / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=cfg.study_name, storage=storage, load_if_exists=True, direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after, n_warmup_steps=0))
    # Seeded by the trials already there: a continued study seeded like its first call would draw the first call's
    # random settings again (measured: chunk 2 of a sweep repeated chunk 1's trials value for value).
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials), n_startup_trials=cfg.startup_trials)
    if cfg.baseline and not study.trials:
        study.enqueue_trial(baseline_settings(cfg), user_attrs={"label": "defaults"})
    return study

