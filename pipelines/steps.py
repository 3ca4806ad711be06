"""What each pipeline step does, as plain functions over paths: the KFP components and the MLproject entry
points are thin shells around these, so a step is testable (and runnable) without KFP.

Every step that talks to MLflow opens its own run through `tracking.step_run`: a child of the pipeline's
parent run when `RunRef.parent_run_id` is set, otherwise a run of its own (a step started alone with
`mlflow run . -e <step>`). Artifacts between steps are folders: datasets are JSONL shards plus a manifest,
the tokenizer is a SentencePiece `.model` file, models are `neuroq.checkpoint` directories.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mlflow

from pipelines import tracking
from pipelines.params import PipelineParams

__all__ = [
    "RunRef",
    "evaluate",
    "ingest_common_crawl",
    "ingest_hf",
    "lineage",
    "merge_dedup_split",
    "register",
    "start",
    "text_digest",
    "train_neuroq",
    "train_tokenizer",
]

SAMPLES_ARTIFACT = "samples/generations.json"


@dataclass(frozen=True)
class RunRef:
    """Where a step logs: the tracking URI, and the pipeline's parent run ("" for a standalone step run)."""

    tracking_uri: str
    parent_run_id: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def start(params: PipelineParams, *, tracking_uri: str = "", run_name: str = "", parent_run_id: str = "") -> RunRef:
    """Open the pipeline's parent run and log every pipeline parameter on it.

    With `parent_run_id` the pipeline adopts an existing run instead (the run `mlflow run .` created for the
    `main` entry point), logging only the parameters that run does not have yet: MLflow params are write-once,
    and `-P learning_rate=1e-3` was already logged by `mlflow run` in its own spelling.
    """
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tags = {"code_version": tracking.code_version(), "data_sources": params.data_sources}
    if parent_run_id:
        tracking.adopt_pipeline_run(uri, parent_run_id, params.to_dict(), tags)
        return RunRef(uri, parent_run_id)
    return RunRef(uri, tracking.start_pipeline_run(uri, params.experiment_name, run_name, params.to_dict(), tags))


def _step(run: RunRef, params: PipelineParams, name: str, *, weights: str = "",
          rerun: str = "rerun this step once MLflow answers again, without retraining"):
    """The step's MLflow run; `weights` is a checkpoint the step reads or writes, named if MLflow goes down, with
    `rerun`, what to do about it."""
    if params.num_threads:
        import torch

        torch.set_num_threads(params.num_threads)
    kept = (lambda: _weights_kept(weights, rerun)) if weights else None
    return tracking.step_run(run.tracking_uri, run.parent_run_id, name, params.experiment_name, kept=kept)


def _weights_kept(checkpoint_dir: str, rerun: str) -> str:
    """What to tell whoever reads a "MLflow is down" error about the trained weights (checked now, not assumed)."""
    from neuroq.checkpoint import verify_checkpoint
    from neuroq.errors import CheckpointError

    if not Path(checkpoint_dir).exists():
        return f"No trained weights had been written to {checkpoint_dir} yet."
    try:
        verify_checkpoint(checkpoint_dir)
    except CheckpointError as error:
        return f"The checkpoint at {checkpoint_dir} does not verify either: {error}"
    return (f"The trained weights are intact in {checkpoint_dir} (every file matches the sha256 in its config.json), "
            f"the train_neuroq step's output artifact: {rerun}.")


def _log_config(prefix: str, config: Mapping[str, Any]) -> None:
    flat: dict[str, Any] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for sub, item in value.items():
                walk(f"{key}.{sub}", item)
        else:
            flat[key] = value

    walk(prefix, config)
    mlflow.log_params(flat)


def text_digest(texts: Iterable[str]) -> str:
    """Content digest of a set of documents, independent of their order (the identity of a validation set)."""
    hashes = sorted(hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts)
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def _read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- data -----------------------------------------------------------------------------------------------

def ingest_hf(params: PipelineParams, out_dir: str) -> dict[str, Any]:
    """The bundled corpus and/or the Hugging Face source, filtered and exact-deduplicated, into `out_dir`."""
    import tempfile

    from neuroq.corpus import write_bundled_corpus

    sources: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="neuroq-bundled-") as scratch:
        if "bundled" in params.sources:
            bundled = write_bundled_corpus(Path(scratch) / "bundled.jsonl")
            sources.append(params.hf_source_config(bundled_path=str(bundled)))
        if "huggingface" in params.sources:
            sources.append(params.hf_source_config())
        return _ingest(params, sources, out_dir, skipped="data_sources names neither bundled nor huggingface")


def ingest_common_crawl(params: PipelineParams, out_dir: str) -> dict[str, Any]:
    """Japanese pages of one Common Crawl crawl, quality-filtered and exact-deduplicated, into `out_dir`."""
    sources = [params.common_crawl_config()] if "common_crawl" in params.sources else []
    return _ingest(params, sources, out_dir, skipped="data_sources does not name common_crawl")


def _ingest(params: PipelineParams, sources: list[Any], out_dir: str, *, skipped: str) -> dict[str, Any]:
    """Run the ingest on some sources with everything in one split; an empty dataset when there are none.

    Near-dedup and the train/validation split wait for the merge, which sees all sources at once; exact dedup
    here is cheap and shrinks what the merge reads. Parquet keeps one schema across sources (`meta` as JSON
    text), so the merge can read every upstream folder with the same loader.
    """
    from neuroq.ingest.pipeline import MANIFEST_FORMAT, run_ingest

    if not sources:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": MANIFEST_FORMAT, "documents_out": 0, "sources": [], "skipped": skipped}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return manifest
    config = params.ingest_config(sources, out_dir)
    config = replace(
        config,
        dedup=replace(config.dedup, near=False),
        output=replace(config.output, format="parquet", val_fraction=0.0),
    )
    return run_ingest(config).manifest


def lineage(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a dataset manifest worth carrying in KFP artifact metadata (small, JSON-safe)."""
    summary: dict[str, Any] = {
        "digest": manifest.get("digest") or manifest.get("content_digest", ""),
        "documents": manifest.get("documents", manifest.get("documents_out", 0)),
        "sources": [source["label"] for source in manifest.get("sources", [])],
    }
    if "skipped" in manifest:
        summary["skipped"] = manifest["skipped"]
    if "characters" in manifest:
        summary["characters"] = manifest["characters"]
    if "stages" in manifest:
        summary["dropped"] = {stage: counts["dropped"] for stage, counts in manifest["stages"].items()}
    return summary


def merge_dedup_split(
    params: PipelineParams, run: RunRef, source_dirs: list[str], train_dir: str, val_dir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deduplicate across all upstream datasets, split by document hash, write one folder per split.

    Each split folder holds JSONL shards and a manifest whose `digest` (`text_digest` of its documents) names
    exactly that text; the merged ingest manifest is logged to the step's MLflow run.
    """
    import tempfile

    from neuroq.errors import DataError
    from neuroq.ingest.config import HFSourceConfig
    from neuroq.ingest.pipeline import run_ingest

    upstream = [(Path(folder), _read_manifest(folder)) for folder in source_dirs]
    sources = [
        HFSourceConfig(path=str(folder / "train"), label="+".join(s["label"] for s in manifest["sources"]))
        for folder, manifest in upstream
        if manifest.get("documents_out")
    ]
    if not sources:
        raise DataError(f"no documents from any source ({params.data_sources}): check the ingest steps' manifests")
    with _step(run, params, "merge_dedup_split"), tempfile.TemporaryDirectory(
        prefix=".merge-", dir=Path(train_dir).parent
    ) as scratch:
        merged_dir = Path(scratch) / "merged"
        config = params.ingest_config(sources, str(merged_dir))
        _log_config("dedup", asdict(config.dedup))
        mlflow.log_params({"data_sources": params.data_sources, "val_fraction": params.val_fraction})
        for _, manifest in upstream:
            _log_source_lineage(manifest)
        result = run_ingest(config)
        mlflow.log_dict(result.manifest, "data/merged_manifest.json")
        split_manifests = [
            _write_split(result.manifest, merged_dir, split, Path(target))
            for split, target in (("train", train_dir), ("validation", val_dir))
        ]
        for split_manifest, context in zip(split_manifests, ("training", "validation"), strict=True):
            if not split_manifest["documents"]:
                raise DataError(
                    f"the {split_manifest['split']} split is empty ({result.manifest['documents_out']} documents "
                    f"in all, val_fraction={params.val_fraction}): add data or change val_fraction"
                )
            tracking.log_manifest_dataset(
                split_manifest, str(Path(split_manifest["path"]).resolve()), name=f"neuroq-{context}", context=context
            )
        stages = result.manifest["stages"]
        mlflow.log_metrics(
            {
                "documents_in": result.manifest["documents_in"],
                "documents_out": result.manifest["documents_out"],
                "characters_out": result.manifest["characters_out"],
                "train_documents": split_manifests[0]["documents"],
                "validation_documents": split_manifests[1]["documents"],
                **{f"dedup_dropped.{reason}": count for reason, count in stages["dedup"]["dropped"].items()},
            }
        )
        return split_manifests[0], split_manifests[1]


def _log_source_lineage(manifest: Mapping[str, Any]) -> None:
    """Each upstream source as an MLflow dataset input, with its counts per stage and drop reason as metrics."""
    from neuroq.corpus import bundled_corpus_info

    for source in manifest.get("sources", []):
        label = source["label"]
        # The bundled corpus was read from a temporary copy; the package it ships in is its real origin.
        uri = f"pypi:{bundled_corpus_info()['source']}" if label.startswith("bundled:") else source["uri"]
        tracking.log_manifest_dataset({"digest": manifest.get("content_digest", "")}, uri, name=label, context="source")
        key = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)
        counts = {f"{key}.documents_out": source["documents_out"]}
        for stage, numbers in source.get("stages", {}).items():
            counts[f"{key}.{stage}_in"] = numbers["in"]
            counts.update({f"{key}.{stage}_dropped.{reason}": n for reason, n in numbers["dropped"].items()})
        mlflow.log_metrics(counts)


def _write_split(manifest: Mapping[str, Any], merged_dir: Path, split: str, target: Path) -> dict[str, Any]:
    """Move one split's shards to `target` as JSONL (what neuroq.data.read_texts reads) with its manifest."""
    from neuroq.ingest.output import read_documents

    target.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    for entry in manifest["splits"][split]["files"]:
        shard = merged_dir / entry["path"]
        records = read_documents(shard)
        texts.extend(record["text"] for record in records)
        name = shard.name.split(".")[0] + ".jsonl"
        with (target / name).open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    split_manifest = {
        "format": "neuroq-split",
        "split": split,
        "path": str(target),
        "digest": text_digest(texts),
        "documents": len(texts),
        "characters": sum(map(len, texts)),
        "dataset_digest": manifest["content_digest"],
        "sources": [{"label": s["label"], "uri": s["uri"]} for s in manifest["sources"]],
    }
    manifest_text = json.dumps(split_manifest, ensure_ascii=False, indent=2) + "\n"
    (target / "manifest.json").write_text(manifest_text, encoding="utf-8")
    return split_manifest


# --- tokenizer ------------------------------------------------------------------------------------------

def train_tokenizer(params: PipelineParams, run: RunRef, train_dir: str, out_path: str) -> dict[str, Any]:
    """Train the SentencePiece tokenizer on the training split; write it to `out_path`."""
    from neuroq.data import read_texts
    from neuroq.tokenizer import NeuroQTokenizer

    config = params.tokenizer_config()
    with _step(run, params, "train_tokenizer"):
        _log_config("tokenizer", config.to_dict())
        tokenizer = NeuroQTokenizer.train(read_texts(train_dir), config)
        path = tokenizer.save(Path(out_path))
        texts = list(read_texts(train_dir))
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
        chars_per_token = sum(map(len, texts)) / max(1, n_tokens)
        mlflow.log_metrics({"vocab_size": tokenizer.vocab_size, "train_chars_per_token": chars_per_token})
        mlflow.log_artifact(str(path), "tokenizer")
        return {"vocab_size": tokenizer.vocab_size, "sha256": tokenizer.sha256, "chars_per_token": chars_per_token}


# --- training -------------------------------------------------------------------------------------------

def train_neuroq(
    params: PipelineParams, run: RunRef, train_dir: str, val_dir: str, tokenizer_path: str, out_dir: str
) -> dict[str, Any]:
    """Tokenize both splits into shards, train NeuroQ with per-step metrics to MLflow, export the checkpoint.

    MLflow down during training does not stop it (`tracking.TrainingMetricsLogger` keeps the metrics until MLflow
    answers); still down once the weights are exported, the step fails naming them.

    `out_dir` receives the exported checkpoint (weights, config, tokenizer); the token shards live in a scratch
    folder beside it that is removed afterwards, and so does the training checkpoint unless `checkpoint_dir` is set:
    then it lives there (see `_resume_dir`), the step resumes from it, and it is removed once the step succeeded.
    """
    from neuroq.data import PackedBlocks, read_texts, write_token_shards
    from neuroq.tokenizer import NeuroQTokenizer
    from neuroq.train import train

    out = Path(out_dir)
    scratch = out.with_name(out.name + ".work")
    # A failed task publishes no output artifact on a cluster: the checkpoint_dir copy is what a retry gets back.
    rerun = (f"a retry of this step resumes from its training checkpoint under {params.checkpoint_dir}, without "
             "training again" if params.checkpoint_dir else
             "a retry of this step trains again (with a checkpoint_dir it would resume), or run evaluate and "
             "register on this folder")
    with _step(run, params, "train_neuroq", weights=out_dir, rerun=rerun) as active:
        tokenizer = NeuroQTokenizer.load(tokenizer_path)
        write_token_shards(read_texts(train_dir), tokenizer, scratch / "tokens" / "train")
        write_token_shards(read_texts(val_dir), tokenizer, scratch / "tokens" / "validation")
        train_blocks = PackedBlocks(scratch / "tokens" / "train", params.seq_length)
        val_blocks = PackedBlocks(scratch / "tokens" / "validation", params.seq_length)
        config = params.train_config(
            str(scratch / "run"), vocab_size=tokenizer.vocab_size, n_train_blocks=len(train_blocks)
        )
        if params.checkpoint_dir:
            config = replace(config, out_dir=str(_resume_dir(params, config, train_dir, val_dir, tokenizer)))
        _log_config("train", config.to_dict())
        _log_split_inputs(train_dir, val_dir)
        mlflow.log_params({"train_blocks": len(train_blocks), "val_blocks": len(val_blocks),
                           "train_processes": params.processes, "resumed_from_step": _resume_step(config)})

        metrics_logger = tracking.TrainingMetricsLogger(run.tracking_uri, active.info.run_id)
        if params.processes > 1:
            from pipelines import distributed

            spec = distributed.TorchrunSpec(
                config=config.to_dict(), train_tokens=str(scratch / "tokens" / "train"),
                val_tokens=str(scratch / "tokens" / "validation"), tokenizer=tokenizer_path,
                tracking_uri=run.tracking_uri, run_id=active.info.run_id,
                result=str(scratch / "result.json"), num_threads=params.num_threads,
            )
            result = distributed.launch(params.processes, spec, scratch / "torchrun.json", metrics_logger)
        else:
            result = train(config, train_blocks, val_blocks, tokenizer, callbacks=[metrics_logger])
        # The weights reach the step's output before anything else is logged: MLflow down from here on fails the
        # step without losing them (the error says where they are).
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(result.checkpoint_path, out)
        shutil.rmtree(scratch, ignore_errors=True)
        metrics_logger.flush()
        tracking.log_loss_curve(result.history)
        summary = {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "tokens_per_s": result.tokens_per_s,
            "final_train_loss": result.train_loss,
            "final_val_loss": result.final_val_loss,
            "best_val_loss": result.best_val_loss,
        }
        mlflow.log_metrics({key: float(value) for key, value in summary.items() if value is not None})
        if params.checkpoint_dir:
            shutil.rmtree(config.out_dir)  # kept until now so that a retry after any failure above resumes
        return summary


def _resume_dir(params: PipelineParams, config: Any, train_dir: str, val_dir: str, tokenizer: Any) -> Path:
    """The training's folder under `checkpoint_dir`, named by everything that decides its result.

    The training config, the text of both splits, the tokenizer and the number of processes; a retry (or a rerun)
    with the same inputs finds its own checkpoint there and resumes exactly (training is a function of these and
    the step), while any change lands in another folder instead of resuming a checkpoint of something else.
    """
    from neuroq.data import read_texts

    def digest(folder: str) -> str:
        # merge_dedup_split's manifest already holds it; a folder from elsewhere is read once more.
        return str(_read_manifest(folder).get("digest") or text_digest(read_texts(folder)))

    identity = {
        "train_config": {**config.to_dict(), "out_dir": None},
        "train_text": digest(train_dir),
        "val_text": digest(val_dir),
        "tokenizer": tokenizer.sha256,
        "processes": params.processes,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Path(params.checkpoint_dir).resolve() / f"train_neuroq-{key}"


def _resume_step(config: Any) -> int:
    """The step a resumed training starts from: that of `out_dir/last` (after undoing a save the previous attempt
    was killed in, as the trainer would), or 0."""
    from neuroq.checkpoint import read_checkpoint_config, recover_interrupted_save
    from neuroq.errors import CheckpointError
    from neuroq.train import LAST_CHECKPOINT

    if not config.resume:
        return 0
    last = Path(config.out_dir) / LAST_CHECKPOINT
    recover_interrupted_save(last)
    try:
        return int(read_checkpoint_config(last)["extra"]["step"])
    except (CheckpointError, KeyError):
        return 0  # none yet, or one the trainer will refuse with its own error


def _log_split_inputs(train_dir: str, val_dir: str) -> None:
    for folder, context in ((train_dir, "training"), (val_dir, "validation")):
        manifest = _read_manifest(folder)
        tracking.log_manifest_dataset(manifest, str(Path(folder).resolve()), name=f"neuroq-{context}", context=context)


# --- evaluation -----------------------------------------------------------------------------------------

def evaluate(params: PipelineParams, run: RunRef, checkpoint_dir: str, val_dir: str) -> dict[str, Any]:
    """Score the validation text (loss, perplexity, bits/char), generate samples, and log both.

    Returns the metrics plus `validation_digest`, the identity of the text the scores are about.
    """
    from neuroq.checkpoint import load_checkpoint
    from neuroq.data import read_texts
    from neuroq.evaluate import generation_stats, score_text
    from neuroq.generate import generate
    from neuroq.tokenizer import NeuroQTokenizer

    with _step(run, params, "evaluate", weights=checkpoint_dir):
        loaded = load_checkpoint(checkpoint_dir)
        texts = list(read_texts(val_dir))
        digest = text_digest(texts)
        scores = score_text(loaded.model, loaded.tokenizer, texts)
        prompts = [NeuroQTokenizer.format_chat([(prompt, None)]) for prompt in params.prompts]
        samples = [group[0] for group in generate(loaded.model, loaded.tokenizer, prompts, params.generation_config())]
        stats = generation_stats([sample.token_ids for sample in samples], loaded.tokenizer)
        metrics = {
            "val_loss": scores["loss"],
            "val_perplexity": scores["perplexity"],
            "val_bits_per_char": scores["bits_per_char"],
            **{f"sample_{key}": value for key, value in stats.items()},
        }
        mlflow.log_metrics(metrics)
        mlflow.log_params(
            {"validation_digest": digest, "validation_docs": len(texts), "validation_chars": scores["n_chars"]}
        )
        mlflow.log_dict(
            [
                {"prompt": prompt, "completion": sample.text, "finish_reason": sample.finish_reason}
                for prompt, sample in zip(params.prompts, samples, strict=True)
            ],
            SAMPLES_ARTIFACT,
        )
        return {**metrics, "validation_digest": digest}


# --- registry -------------------------------------------------------------------------------------------

SMOKE_PROMPT = "こんにちは"


def register(
    params: PipelineParams,
    run: RunRef,
    checkpoint_dir: str,
    val_dir: str,
    *,
    evaluation: Mapping[str, Any],
    train_digest: str,
) -> Any:
    """Log the checkpoint as the NeuroQ pyfunc, register it, apply the promotion policy, close the parent run.

    The decision and its reason are tags of this step's run and of the parent run, and a log line.
    """
    from mlflow.tracking import MlflowClient

    from serving.generation import log_neuroq_model
    from serving.promotion import Evaluation, promote

    name = params.registered_model_name
    with _step(run, params, "register", weights=checkpoint_dir) as active:
        info = log_neuroq_model(
            checkpoint_dir,
            registered_model_name=name,
            metadata={"validation_digest": evaluation["validation_digest"], "data_digest": train_digest},
        )
        client = MlflowClient(run.tracking_uri)
        decision = promote(
            client,
            name,
            str(info.registered_model_version),
            Evaluation(
                bits_per_char=float(evaluation["val_bits_per_char"]),
                validation_digest=str(evaluation["validation_digest"]),
                metrics={k: float(v) for k, v in evaluation.items() if k.startswith("val_")},
            ),
            smoke_test=_load_and_generate,
            rescore=lambda model_uri: _bits_per_char(model_uri, val_dir),
            tags={
                "data_digest": train_digest,
                "code_version": tracking.code_version(),
                "pipeline_run_id": run.parent_run_id or active.info.run_id,
                "mode": params.mode,
            },
            min_improvement=params.min_improvement,
        )
        outcome = {
            "promotion.decision": "promoted" if decision.promoted else "kept_champion",
            "promotion.reason": decision.reason,
            "registered_model": f"{name}/{decision.version}",
            "champion_version": str(decision.champion),
        }
        mlflow.set_tags(outcome)
        if run.parent_run_id:
            # The headline numbers on the parent too, so the experiment's run table compares pipeline runs.
            for key, value in outcome.items():
                client.set_tag(run.parent_run_id, key, value)
            for key in ("val_bits_per_char", "val_loss", "val_perplexity"):
                client.log_metric(run.parent_run_id, key, float(evaluation[key]))
            tracking.finish_pipeline_run(run.tracking_uri, run.parent_run_id)
    return decision


def _load_and_generate(model_uri: str) -> None:
    """Load a registered version the way serving does and generate one completion; raise on any problem."""
    model = mlflow.pyfunc.load_model(model_uri)
    answer = model.predict({"prompt": SMOKE_PROMPT, "max_tokens": 8, "seed": 0})
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if not choices or not isinstance(choices[0].get("text"), str):
        raise RuntimeError(f"{model_uri} answered a completion request with {answer!r}")


def _bits_per_char(model_uri: str, val_dir: str) -> float:
    """Bits/char of a registered NeuroQ version on the validation text in `val_dir`."""
    from neuroq.data import read_texts
    from neuroq.evaluate import score_text

    served = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return score_text(served.model, served.tokenizer, list(read_texts(val_dir)))["bits_per_char"]
