"""Every knob of the pipeline in one flat, typed dataclass, and the step configs built from it.

Pipeline parameters must be flat scalars (KFP passes strings, numbers and booleans), while each step runs on the
library's own typed configs (`IngestConfig`, `TokenizerConfig`, `NeuroQConfig`, `TrainConfig`,
`GenerationConfig`). `PipelineParams` is the single place that maps one onto the other: the KFP components,
`python -m pipelines.run` and the MLproject entry points all build a `PipelineParams` and call the same
`*_config()` method, so no knob is defined twice. Where a default is not the library's own, the reason is that
the embedded default run must finish in minutes on a laptop CPU with the bundled corpus.

Names follow the old serverless handler where users know them (`mode`, `epochs`, `batch_size`,
`learning_rate`, `seq_length`, `data_sources`, `common_crawl_config.max_records` -> `cc_max_records`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from neuroq.errors import ConfigError
from neuroq.generate import GenerationConfig
from neuroq.ingest.config import (
    CommonCrawlConfig,
    DedupConfig,
    HFSourceConfig,
    IngestConfig,
    OutputConfig,
    QualityConfig,
)
from neuroq.model import NeuroQConfig
from neuroq.tokenizer import TokenizerConfig
from neuroq.train import TrainConfig
from neuroq.validation import require

__all__ = ["DATA_SOURCES", "PipelineParams", "add_arguments", "from_arguments"]

# "bundled" is the chatterbot-corpus Japanese dialogues shipped with the install (neuroq.corpus): the data the
# pipeline trains on when nothing else is given, with no network.
DATA_SOURCES = ("bundled", "huggingface", "common_crawl")


@dataclass(frozen=True)
class PipelineParams:
    # --- data -------------------------------------------------------------------------------------------
    data_sources: str = "bundled"  # comma-separated subset of DATA_SOURCES
    hf_path: str = ""  # hub dataset name, or a local file / folder / save_to_disk folder
    hf_name: str = ""  # hub configuration (subset), e.g. "ja"
    hf_split: str = HFSourceConfig.split
    hf_text_column: str = HFSourceConfig.text_column
    hf_template: str = ""  # e.g. "<USER>{instruction}<ASSISTANT>{output}"; replaces hf_text_column
    hf_max_records: int = 0  # 0 = all rows
    hf_streaming: bool = HFSourceConfig.streaming
    cc_crawl_id: str = CommonCrawlConfig.crawl_id
    cc_endpoint_url: str = ""  # empty = AWS S3; any S3-compatible mirror otherwise
    cc_bucket: str = CommonCrawlConfig.bucket
    cc_anonymous: bool = CommonCrawlConfig.anonymous
    cc_max_records: int = 100  # the old handler's common_crawl_config.max_records default
    cc_max_files: int = 1  # 0 = every file of wet.paths.gz from cc_first_file on
    cc_first_file: int = CommonCrawlConfig.first_file  # index into wet.paths.gz where the window starts
    # Ingest tasks the window of WET files is split into (contiguous windows, one KFP task each); cc_max_records
    # then applies to each shard. 1 reproduces the single-process ingest task for task.
    cc_shards: int = 1
    # More than 1: the Hugging Face source is read by that many tasks (contiguous `Dataset.shard` blocks, not
    # streamed; hf_max_records then applies per shard) and deduplicated with the crawl's sharded stages. 1 keeps
    # the single ingest_hf task.
    hf_shards: int = 1
    # Tasks the cross-shard dedup fans out to, each one range of exact keys and an equal share of the LSH buckets.
    dedup_tasks: int = 1
    near_dedup: bool = DedupConfig.near
    dedup_threshold: float = DedupConfig.threshold
    val_fraction: float = 0.1  # the bundled corpus is small: 5% would leave too few validation documents
    # --- tokenizer --------------------------------------------------------------------------------------
    vocab_size: int = 2000  # the bundled corpus (~45k characters) needs ~1300 pieces for its characters alone
    # --- model (the old handler's embed_dim / hidden_dim / num_heads / num_layers) ------------------------
    mode: str = NeuroQConfig.mode
    # A NeuroQConfig preset (e.g. "base", "large": the GPU sizes, context 1024) whose sizes and context replace
    # n_embd, n_ff, n_head and n_layer; seq_length stays the training block size, at most that context.
    preset: str = ""
    n_embd: int = 64
    n_ff: int = 128
    n_head: int = 4
    n_layer: int = 2
    seq_length: int = 64  # context length: the model's max_seq_len and the training block size
    dropout: float = NeuroQConfig.dropout
    # --- training ---------------------------------------------------------------------------------------
    max_steps: int = 300
    epochs: int = 0  # > 0 replaces max_steps by epochs * (optimizer steps per pass over the training blocks)
    batch_size: int = 16
    learning_rate: float = TrainConfig.lr
    warmup_steps: int = 20
    eval_interval: int = 50
    seed: int = TrainConfig.seed
    device: str = TrainConfig.device
    # GPUs for train_neuroq on a cluster: its pod's accelerator limit and, when > 1, the number of processes
    # `torchrun --nproc-per-node` starts there (DDP, one per GPU; on a machine without CUDA they train on the
    # CPU with gloo). Each optimizer step then sees batch_size x gpus blocks. 0 asks for no GPU.
    gpus: int = 1
    # CPU threads torch may use in the train, evaluate and register steps; 0 keeps torch's default (one per core).
    # Tiny models train several times faster on one thread than on two contended ones.
    num_threads: int = 0
    # Where train_neuroq keeps its training checkpoint so that a retried or rerun step resumes from it instead of
    # training again (a preempted node, MLflow down at the end): a folder that outlives the step's pod, e.g. a
    # PersistentVolumeClaim (`python -m pipelines.run compile --checkpoint-pvc NAME` mounts one and makes its
    # mount this default). Empty: scratch beside the step's output, and a retry starts from step 0.
    checkpoint_dir: str = ""
    ckpt_interval: int = 100  # steps between those checkpoints, and one at the end (only with a checkpoint_dir)
    # Where the data and tokenizer steps keep their outputs keyed by their inputs' content, so that a rerun with
    # the same data and knobs reuses them instead of computing them again (`python -m pipelines.run local` sets
    # <pipeline_root>/reuse). Empty: always compute. On a cluster, a volume every step's pod mounts.
    reuse_dir: str = ""
    # --- evaluation and registry ------------------------------------------------------------------------
    sample_prompts: str = "こんにちは|今日はいい天気ですね|あなたは誰ですか"  # "|"-separated chat turns
    sample_max_new_tokens: int = 48
    experiment_name: str = "neuroq"
    registered_model_name: str = "neuroq"
    min_improvement: float = 0.0  # bits/char a challenger must gain over the champion to replace it

    def __post_init__(self) -> None:
        require(
            bool(self.sources) and set(self.sources) <= set(DATA_SOURCES),
            "data_sources",
            f"a comma-separated subset of {', '.join(DATA_SOURCES)}",
            self.data_sources,
        )
        if "huggingface" in self.sources and not self.hf_path:
            raise ConfigError("data_sources includes huggingface but hf_path is empty: name a dataset or a local path")
        for name in ("hf_max_records", "cc_max_records", "cc_max_files", "cc_first_file", "epochs", "num_threads",
                     "gpus", "ckpt_interval"):
            value = getattr(self, name)
            require(value >= 0, name, ">= 0", value)
        require(self.cc_shards >= 1, "cc_shards", ">= 1 (ingest tasks for the Common Crawl window)", self.cc_shards)
        require(self.hf_shards >= 1, "hf_shards", ">= 1 (ingest tasks for the Hugging Face dataset)", self.hf_shards)
        if self.hf_shards > 1 and self.hf_streaming:
            raise ConfigError("hf_shards > 1 needs hf_streaming off: streamed shards cannot number their rows "
                              "like one task does")
        require(self.dedup_tasks >= 1, "dedup_tasks", ">= 1 (tasks of the cross-shard dedup)", self.dedup_tasks)
        if not self.prompts:
            raise ConfigError("sample_prompts is empty: give at least one prompt")
        if self.sample_max_new_tokens >= self.seq_length:
            raise ConfigError(
                f"sample_max_new_tokens ({self.sample_max_new_tokens}) must be below seq_length ({self.seq_length}): "
                "a sample has to fit in the model's context with its prompt"
            )
        # The library configs check everything else; building them here fails before any step starts.
        if "huggingface" in self.sources:
            self.hf_source_config()
        if "common_crawl" in self.sources:
            self.common_crawl_config()
        self.tokenizer_config()
        self.train_config(out_dir=".")
        self.generation_config()

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.data_sources.split(",") if s.strip())

    @property
    def prompts(self) -> list[str]:
        return [p.strip() for p in self.sample_prompts.split("|") if p.strip()]

    @property
    def processes(self) -> int:
        """Training processes of train_neuroq: one per GPU, and one when it asks for none."""
        return max(1, self.gpus)

    # --- step configs -----------------------------------------------------------------------------------
    def hf_source_config(self, bundled_path: str | None = None) -> HFSourceConfig:
        """The Hugging Face source; with `bundled_path`, the bundled corpus read through the same loader."""
        if bundled_path is not None:
            return HFSourceConfig(path=bundled_path, label="bundled:chatterbot-corpus-japanese")
        return HFSourceConfig(
            path=self.hf_path,
            name=self.hf_name or None,
            split=self.hf_split,
            text_column=self.hf_text_column,
            template=self.hf_template or None,
            max_records=self.hf_max_records or None,
            streaming=self.hf_streaming,
        )

    def common_crawl_config(self) -> CommonCrawlConfig:
        return CommonCrawlConfig(
            crawl_id=self.cc_crawl_id,
            bucket=self.cc_bucket,
            endpoint_url=self.cc_endpoint_url or None,
            anonymous=self.cc_anonymous,
            max_records=self.cc_max_records or None,
            max_files=self.cc_max_files or None,
            first_file=self.cc_first_file,
        )

    def ingest_config(self, sources: Sequence[HFSourceConfig | CommonCrawlConfig], output_dir: str) -> IngestConfig:
        return IngestConfig(
            sources=tuple(sources),
            quality=QualityConfig(),
            dedup=DedupConfig(near=self.near_dedup, threshold=self.dedup_threshold, seed=self.seed),
            output=OutputConfig(output_dir=output_dir, format="jsonl", val_fraction=self.val_fraction, overwrite=True),
        )

    def tokenizer_config(self) -> TokenizerConfig:
        # A soft limit: a corpus too small for vocab_size yields a smaller tokenizer instead of failing the run.
        threads = {"num_threads": self.num_threads} if self.num_threads else {}
        return TokenizerConfig(vocab_size=self.vocab_size, seed=self.seed, hard_vocab_limit=False, **threads)

    def model_config(self, vocab_size: int | None = None) -> NeuroQConfig:
        common = {"mode": self.mode, "vocab_size": vocab_size or self.vocab_size, "dropout": self.dropout}
        if self.preset:
            return NeuroQConfig.preset(self.preset, **common)
        return NeuroQConfig(
            n_embd=self.n_embd,
            n_ff=self.n_ff,
            n_head=self.n_head,
            n_layer=self.n_layer,
            max_seq_len=self.seq_length,
            **common,
        )

    def train_config(
        self, out_dir: str, *, vocab_size: int | None = None, n_train_blocks: int | None = None
    ) -> TrainConfig:
        """`n_train_blocks` turns `epochs` into optimizer steps once the training data is known."""
        max_steps = self.max_steps
        if self.epochs and n_train_blocks is not None:
            max_steps = self.epochs * max(1, math.ceil(n_train_blocks / (self.batch_size * self.processes)))
        return TrainConfig(
            model=self.model_config(vocab_size),
            out_dir=out_dir,
            max_steps=max_steps,
            batch_size=self.batch_size,
            block_size=self.seq_length,
            lr=self.learning_rate,
            warmup_steps=min(self.warmup_steps, max(0, max_steps - 1)),
            eval_interval=self.eval_interval,
            # Without a checkpoint_dir the checkpoints would go to scratch that a retry does not see: only cost.
            ckpt_interval=self.ckpt_interval if self.checkpoint_dir else 0,
            resume=bool(self.checkpoint_dir),
            log_interval=max(1, min(10, max_steps // 20 or 1)),
            seed=self.seed,
            device=self.device,
            progress=False,
        )

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.sample_max_new_tokens, seed=self.seed)

    # --- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_ingest_knobs(cls, data: Mapping[str, Any]) -> PipelineParams:
        """`from_dict` for an ingest task, which sees only its source family's knobs (pipelines.pipeline's
        HF_KNOBS or CC_KNOBS, so that its cache key changes only when its own data would).

        A source whose knobs it does not see leaves `data_sources` first: the crawl's tasks would otherwise fail the
        check that huggingface names an hf_path. What remains names no source of theirs when empty ("bundled",
        which only the Hugging Face task reads).
        """
        sources = [source.strip() for source in str(data.get("data_sources", "")).split(",")]
        kept = [source for source in sources if source and (source != "huggingface" or "hf_path" in data)]
        return cls.from_dict({**data, "data_sources": ",".join(kept) or "bundled"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineParams:
        """Inverse of `to_dict`, also for values KFP turned into strings (a dict of pipeline parameters
        reaches a component as {"max_steps": "300.0", "hf_streaming": "false", ...}).

        Unknown keys are errors so a misspelt knob never silently does nothing; missing keys take defaults.
        """
        types = {f.name: str(f.type) for f in fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ConfigError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(types)}")
        return cls(**{key: _coerce(key, types[key], value) for key, value in data.items()})


def _coerce(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "bool":
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if kind == "int":
            number = float(value)
            if not number.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            return int(number)
        if kind == "float":
            return float(value)
        return str(value)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ConfigError(f"pipeline parameter {name} must be {kind}: {error}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One option per field, defaults from the dataclass; `--max_steps` and `--max-steps` both work
    (`mlflow run -P max_steps=5` passes the former)."""
    for field in fields(PipelineParams):
        if only is not None and field.name not in only:
            continue
        kind = {"bool": _parse_bool, "int": int, "float": float}.get(str(field.type), str)
        dashed = field.name.replace("_", "-")
        flags = [f"--{field.name}"] + ([f"--{dashed}"] if dashed != field.name else [])
        parser.add_argument(*flags, dest=field.name, type=kind, default=field.default, metavar=field.name.upper())


def from_arguments(namespace: argparse.Namespace) -> PipelineParams:
    names = {f.name for f in fields(PipelineParams)}
    return PipelineParams(**{key: value for key, value in vars(namespace).items() if key in names})
