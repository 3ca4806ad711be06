"""The training steps: the SentencePiece tokenizer, then NeuroQ (in process, or on several GPUs with torchrun).

The tokenizer is a SentencePiece `.model` file; the model is a `neuroq.checkpoint` directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow

from components.params import PipelineParams
from components.steps import tracking, training_metrics
from components.steps.base import REUSED_TAG, RunRef, log_config, read_manifest, reuse_or_run, step_run, text_digest

__all__ = ["PROGRESS_PATTERN", "train_neuroq", "train_tokenizer"]

log = logging.getLogger(__name__)

# A progress line of `_progress_logger`, as the console of `python -m pipelines.run local` reads it.
PROGRESS_PATTERN = re.compile(r"progress step (?P<step>\d+)/(?P<total>\d+) train_loss (?P<loss>[0-9.]+)")


def train_tokenizer(params: PipelineParams, run: RunRef, train_dir: str, out_path: str) -> dict[str, Any]:
    """Train the SentencePiece tokenizer on the training split; write it to `out_path`.

    With a `reuse_dir`, a tokenizer trained before with the same config on the same text is reused.
    """
    from neuroq.data import read_texts
    from neuroq.tokenizer import NeuroQTokenizer

    config = params.tokenizer_config()

    def compute() -> dict[str, Any]:
        texts = list(read_texts(train_dir))
        tokenizer = NeuroQTokenizer.train(texts, config)
        tokenizer.save(Path(out_path))
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
        chars_per_token = sum(map(len, texts)) / max(1, n_tokens)
        return {"vocab_size": tokenizer.vocab_size, "sha256": tokenizer.sha256, "chars_per_token": chars_per_token}

    with step_run(run, params, "train_tokenizer"):
        log_config("tokenizer", config.to_dict())
        key = {"tokenizer": config.to_dict(), "train_text": _text_digest(train_dir)}
        info, reused = reuse_or_run(params.reuse_dir, "train_tokenizer", key, {"tokenizer.model": Path(out_path)},
                                    compute)
        if reused:
            mlflow.set_tag(REUSED_TAG, reused)
        mlflow.log_metrics({"vocab_size": info["vocab_size"], "train_chars_per_token": info["chars_per_token"]})
        mlflow.log_artifact(out_path, "tokenizer")
        return {**info, "reused": bool(reused)}


def train_neuroq(
    params: PipelineParams, run: RunRef, train_dir: str, val_dir: str, tokenizer_path: str, out_dir: str
) -> dict[str, Any]:
    """Tokenize both splits into shards, train NeuroQ with per-step metrics to MLflow, export the checkpoint.

    MLflow down during training does not stop it (`training_metrics.TrainingMetricsLogger` keeps the metrics until
    MLflow answers); still down once the weights are exported, the step fails naming them.

    `out_dir` receives the exported checkpoint (weights, config, tokenizer); the token shards live in a scratch
    folder beside it that is removed afterwards, and so does the training checkpoint unless `checkpoint_dir` is set:
    then it lives there (see `_resume_dir`), the step resumes from it, and it is removed once the step succeeded.
    """
    from neuroq.data import read_texts
    from neuroq.evaluate import unigram_bits_per_char
    from neuroq.shards import PackedBlocks, write_token_shards
    from neuroq.tokenizer import NeuroQTokenizer
    from neuroq.train import resume_step, train

    out = Path(out_dir)
    scratch = out.with_name(out.name + ".work")
    # A failed task publishes no output artifact on a cluster: the checkpoint_dir copy is what a retry gets back.
    rerun = (f"a retry of this step resumes from its training checkpoint under {params.checkpoint_dir}, without "
             "training again" if params.checkpoint_dir else
             "a retry of this step trains again (with a checkpoint_dir it would resume), or run evaluate and "
             "register on this folder")
    with step_run(run, params, "train_neuroq", weights=out_dir, rerun=rerun) as active:
        tokenizer = NeuroQTokenizer.load(tokenizer_path)
        write_token_shards(read_texts(train_dir), tokenizer, scratch / "tokens" / "train")
        val_texts = list(read_texts(val_dir))  # also scored by the unigram baseline below
        write_token_shards(val_texts, tokenizer, scratch / "tokens" / "validation")
        train_blocks = PackedBlocks(scratch / "tokens" / "train", params.seq_length)
        val_blocks = PackedBlocks(scratch / "tokens" / "validation", params.seq_length)
        config = params.train_config(
            str(scratch / "run"), vocab_size=tokenizer.vocab_size, n_train_blocks=len(train_blocks)
        )
        if params.checkpoint_dir:
            config = replace(config, out_dir=str(_resume_dir(params, config, train_dir, val_dir, tokenizer)))
        log_config("train", config.to_dict())
        _log_split_inputs(train_dir, val_dir, run.parent_run_id)
        mlflow.log_params({"train_blocks": len(train_blocks), "val_blocks": len(val_blocks),
                           "train_processes": params.processes, "resumed_from_step": resume_step(config)})

        # The baseline a model must beat on this validation text: token frequencies of the training split.
        unigram = unigram_bits_per_char(train_blocks.shards, val_texts, tokenizer)
        metrics_logger = training_metrics.TrainingMetricsLogger(run.tracking_uri, active.info.run_id)
        if params.processes > 1:
            from components.steps import torchrun

            spec = torchrun.TorchrunSpec(
                config=config.to_dict(), train_tokens=str(scratch / "tokens" / "train"),
                val_tokens=str(scratch / "tokens" / "validation"), tokenizer=tokenizer_path,
                tracking_uri=run.tracking_uri, run_id=active.info.run_id,
                result=str(scratch / "result.json"), num_threads=params.num_threads,
            )
            result = torchrun.launch(params.processes, spec, scratch / "torchrun.json", metrics_logger)
        else:
            progress = _progress_logger(config.max_steps)
            result = train(config, train_blocks, val_blocks, tokenizer, callbacks=[metrics_logger, progress])
        # The weights reach the step's output before anything else is logged: MLflow down from here on fails the
        # step without losing them (the error says where they are).
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(result.checkpoint_path, out)
        shutil.rmtree(scratch, ignore_errors=True)
        metrics_logger.flush()
        training_metrics.log_loss_curve(result.history)
        summary = {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "tokens_per_s": result.tokens_per_s,
            "final_train_loss": result.train_loss,
            "final_val_loss": result.final_val_loss,
            "best_val_loss": result.best_val_loss,
            "parameters": result.parameters,
            "val_unigram_bits_per_char": unigram,
        }
        mlflow.log_metrics({key: float(value) for key, value in summary.items() if value is not None})
        mlflow.set_tag("device", result.device)
        if run.parent_run_id:
            # What the runs table compares pipeline runs by, on the run it lists.
            tracking.log_on_parent(run.tracking_uri, run.parent_run_id,
                                   {key: summary[key] for key in ("parameters", "tokens_seen")},
                                   {"device": result.device, "mode": params.mode})
        if params.checkpoint_dir:
            shutil.rmtree(config.out_dir)  # kept until now so that a retry after any failure above resumes
        return summary


def _resume_dir(params: PipelineParams, config: Any, train_dir: str, val_dir: str, tokenizer: Any) -> Path:
    """The training's folder under `checkpoint_dir`, named by everything that decides its result.

    The training config, the text of both splits, the tokenizer and the number of processes; a retry (or a rerun)
    with the same inputs finds its own checkpoint there and resumes exactly (training is a function of these and
    the step), while any change lands in another folder instead of resuming a checkpoint of something else.
    """
    identity = {
        "train_config": {**config.to_dict(), "out_dir": None},
        "train_text": _text_digest(train_dir),
        "val_text": _text_digest(val_dir),
        "tokenizer": tokenizer.sha256,
        "processes": params.processes,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Path(params.checkpoint_dir).resolve() / f"train_neuroq-{key}"


def _text_digest(folder: str) -> str:
    """The content digest of a split: merge_dedup_split's manifest holds it; a folder from elsewhere is read."""
    from neuroq.data import read_texts

    return str(read_manifest(folder).get("content_digest") or text_digest(read_texts(folder)))


def _log_split_inputs(train_dir: str, val_dir: str, parent_run_id: str) -> None:
    """The splits as dataset inputs of this step's run and of the pipeline's run (its lineage in the runs table)."""
    for folder, context in ((train_dir, "training"), (val_dir, "validation")):
        manifest = read_manifest(folder)
        tracking.log_manifest_dataset(manifest, str(Path(folder).resolve()), name=f"neuroq-{context}", context=context,
                                      also_on=parent_run_id)


def _progress_logger(max_steps: int) -> Callable[[Mapping[str, float], int], None]:
    """A training callback that logs `progress step N/M train_loss L` at every log interval: the line the
    local runner's console turns into a progress bar (PROGRESS_PATTERN)."""

    def report(metrics: Mapping[str, float], step: int) -> None:
        if "train_loss" in metrics:
            log.info("progress step %d/%d train_loss %.4f", step, max_steps, metrics["train_loss"])

    return report
