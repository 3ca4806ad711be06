"""Training loop: AdamW, linear warmup + cosine decay, clipping, accumulation, bf16 on CUDA, compile, DDP, resume.

Exact resume without sampler or RNG state. The blocks of optimizer step ``s`` on rank ``r`` are a pure function
of ``(seed, s, r)``: every sample has a global position ``((s * accum + micro) * world + r) * batch + i``, and
position ``p`` reads block ``perm_e[p % n]`` of epoch ``e = p // n``, where ``perm_e`` is a permutation drawn
from a ``torch.Generator`` seeded with ``(seed, e)``: every block is seen once per epoch, ranks read disjoint
blocks, and there is nothing to save. Dropout and brain-mode noise draw from the global torch RNG, which is
reseeded from ``(seed, s, r)`` at the start of every step for the same reason: a resumed run, or each rank of a
DDP run, reproduces the random numbers of an uninterrupted one without gathering RNG states.

Metrics go to callbacks ``(metrics: dict[str, float], step: int)`` on rank 0, so experiment tracking (MLflow)
plugs in from outside; this module does not import it.

One file, as nanoGPT's ``train.py`` is: the config, the schedule, the step sampler, the rank setup, the loop and its
checkpoints are the parts of one resume contract (a run stopped at any step and resumed equals one that never
stopped), and that contract can only be checked by reading them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from neuroq.checkpoint import load_checkpoint, read_checkpoint_config, recover_interrupted_save, save_checkpoint
from neuroq.errors import CheckpointError, ConfigError
from neuroq.evaluate import evaluate_blocks
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.validation import is_int, is_number, require

if TYPE_CHECKING:
    from neuroq.tokenizer import NeuroQTokenizer

__all__ = ["MetricsCallback", "StepBatchSampler", "TrainConfig", "TrainResult", "get_lr", "resume_step", "train",
           "training_state", "z_loss"]

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]

LAST_CHECKPOINT = "last"
FINAL_CHECKPOINT = "final"


@dataclass
class TrainConfig:
    """Every training knob; the CLI, the KFP component and the MLproject entry point all build this.

    Sizes: one optimizer step sees ``batch_size * grad_accum_steps * world_size`` blocks of ``block_size``
    tokens. ``block_size`` None means the model's ``max_seq_len``. ``min_lr`` None means ``lr / 2``.
    ``eval_interval`` / ``ckpt_interval`` 0 mean "at the end only"; ``eval_batches`` None means the whole
    validation set. ``z_loss`` > 0 adds ``z_loss * mean(logsumexp(logits)^2)`` over the target tokens to the loss
    that is minimised (PaLM's z-loss: it keeps the softmax normaliser near 1); the train and validation losses
    reported stay the plain cross-entropy, comparable with a run without it. ``device`` "auto" picks CUDA when
    present; ``dtype`` "auto" is bf16 autocast on CUDA and fp32 elsewhere. ``resume`` continues from ``out_dir/last`` when it exists, after undoing what a run killed
    mid-save left there (see ``recover_interrupted_save``), so it is always the last complete checkpoint.

    The optimizer defaults are what won on held-out authors at the original's size and budget and carried to the
    spec's layered size (issue 18; docs/sweep.md says what each bought): batch 16 (more steps for the same
    tokens), a high learning rate that decays only to half, a short warmup, little weight decay. They were
    measured on 3-10M-parameter models seeing under an epoch; a GPU preset (``base``, ``large``) wants its own
    (a recipe, or a sweep at that size).
    """

    model: NeuroQConfig = field(default_factory=NeuroQConfig)
    out_dir: str = "runs/neuroq"
    max_steps: int = 2000
    batch_size: int = 16
    grad_accum_steps: int = 1
    block_size: int | None = None
    lr: float = 4e-3
    min_lr: float | None = None
    warmup_steps: int = 50
    weight_decay: float = 0.002
    betas: tuple[float, float] = (0.85, 0.95)
    grad_clip: float = 2.0
    z_loss: float = 0.0
    eval_interval: int = 250
    eval_batches: int | None = 20
    ckpt_interval: int = 500
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    resume: bool = False
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = NeuroQConfig.from_dict(self.model)
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON round trips give lists
        if self.block_size is None:
            self.block_size = self.model.max_seq_len
        if self.min_lr is None:
            self.min_lr = self.lr / 2
        for name in ("max_steps", "batch_size", "grad_accum_steps", "block_size", "log_interval"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"TrainConfig.{name}", "an integer >= 1", value)
        for name in ("warmup_steps", "eval_interval", "ckpt_interval", "num_workers"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, f"TrainConfig.{name}", "an integer >= 0", value)
        require(is_int(self.seed), "TrainConfig.seed", "an integer", self.seed)
        require(self.eval_batches is None or (is_int(self.eval_batches) and self.eval_batches >= 1),
                "TrainConfig.eval_batches", "an integer >= 1 or None (all)", self.eval_batches)
        require(self.block_size <= self.model.max_seq_len, "TrainConfig.block_size",
                f"at most the model's max_seq_len ({self.model.max_seq_len})", self.block_size)
        require(is_number(self.lr) and self.lr > 0, "TrainConfig.lr", "a number > 0", self.lr)
        require(is_number(self.min_lr) and 0 <= self.min_lr <= self.lr, "TrainConfig.min_lr",
                f"a number in [0, lr={self.lr}]", self.min_lr)
        require(is_number(self.weight_decay) and self.weight_decay >= 0, "TrainConfig.weight_decay", "a number >= 0",
                self.weight_decay)
        require(len(self.betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in self.betas), "TrainConfig.betas",
                "two numbers in [0, 1)", self.betas)
        require(is_number(self.grad_clip) and self.grad_clip >= 0, "TrainConfig.grad_clip", "a number >= 0 (0 = off)",
                self.grad_clip)
        require(is_number(self.z_loss) and self.z_loss >= 0, "TrainConfig.z_loss", "a number >= 0 (0 = off)",
                self.z_loss)
        require(self.dtype in ("auto", "float32", "bfloat16"), "TrainConfig.dtype", "'auto', 'float32' or 'bfloat16'",
                self.dtype)
        try:
            device_ok = self.device == "auto" or bool(torch.device(self.device).type)
        except (RuntimeError, TypeError):
            device_ok = False
        require(device_ok, "TrainConfig.device", "'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'",
                self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the model config nested); ``TrainConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr``, cosine decay to ``min_lr``.

    Warmup reaches ``lr`` at step ``warmup_steps``; the cosine ends at ``min_lr`` on the last step
    (``max_steps - 1``), so every step of the run is on the schedule.
    """
    assert cfg.min_lr is not None
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    decay_steps = cfg.max_steps - 1 - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    ratio = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


@dataclass
class TrainResult:
    """Summary of a :func:`train` call; ``checkpoint_path`` is the final export (weights, config, tokenizer)."""

    steps: int
    tokens_seen: int
    tokens_per_s: float
    train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    checkpoint_path: Path | None
    last_checkpoint_path: Path | None
    parameters: int  # non-embedding, as NeuroQ.num_params() counts them
    device: str  # where it trained and in which dtype, e.g. "cuda:0/bfloat16"
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers; sha256 keeps nearby tuples like (s, 1) and (s + 1, 0) unrelated."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Yields the block indices of micro-batches ``start_step * accum`` onwards for one rank (see module doc)."""

    def __init__(self, n_blocks: int, batch_size: int, *, seed: int, start_step: int, max_steps: int,
                 grad_accum_steps: int = 1, rank: int = 0, world_size: int = 1):
        self.n = n_blocks
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.accum = grad_accum_steps
        self.rank = rank
        self.world = world_size
        self._epoch = -1
        self._perm: list[int] = []

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accum

    def indices(self, step: int, micro: int) -> list[int]:
        first = ((step * self.accum + micro) * self.world + self.rank) * self.batch_size
        return [self._block(p) for p in range(first, first + self.batch_size)]

    def _block(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        return self._perm[offset]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accum):
                yield self.indices(step, micro)


@dataclass
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    owns = not dist.is_initialized()
    if owns:
        use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), owns)


def _resolve_device(cfg: TrainConfig, ddp: _Dist) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("TrainConfig.device is 'cuda' but no CUDA device is available: use --device cpu")
        # set_device needs an index: a bare "cuda" means the current device.
        index = ddp.local_rank if ddp.world_size > 1 else (device.index or torch.cuda.current_device())
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def _resolve_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


def _check_data(cfg: TrainConfig, train_blocks: Dataset, val_blocks: Dataset | None,
                tokenizer: NeuroQTokenizer) -> None:
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"TrainConfig.model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                          f"vocabulary ({tokenizer.vocab_size}): set vocab_size to at least that")
    for name, blocks in (("training", train_blocks), ("validation", val_blocks)):
        if blocks is None:
            continue
        if len(blocks) == 0:  # type: ignore[arg-type]
            raise ConfigError(f"the {name} data has no block of block_size={cfg.block_size} tokens: "
                              "give more text or a smaller block_size")
        length = len(blocks[0][0])
        if length != cfg.block_size:
            raise ConfigError(f"TrainConfig.block_size is {cfg.block_size} but the {name} blocks have {length} "
                              "tokens: build the blocks with the same block_size")


def resume_step(cfg: TrainConfig) -> int:
    """The optimizer step a training with `cfg` starts from: that of ``out_dir/last`` when resuming, else 0.

    A run killed mid-save left a partial temp dir or, between the renames, its previous checkpoint aside: this
    undoes that first, so ``last`` is always the last complete checkpoint. Idempotent, so a caller may ask
    before training starts (the pipeline logs the answer).
    """
    if not cfg.resume:
        return 0
    last = Path(cfg.out_dir) / LAST_CHECKPOINT
    recover_interrupted_save(last)
    try:
        return int(read_checkpoint_config(last)["extra"]["step"])
    except (CheckpointError, KeyError):
        return 0  # none yet, or one `_restore` will refuse with its own error


def z_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared log-normaliser ``logsumexp(logits)^2`` over the positions with a target (not -100)."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    keep = targets != -100
    return (lse.square() * keep).sum() / keep.sum().clamp(min=1)


def _reseed(cfg: TrainConfig, step: int, rank: int) -> None:
    torch.manual_seed(_mix(cfg.seed, step, rank, 1))


def train(
    config: TrainConfig,
    train_blocks: Dataset,
    val_blocks: Dataset | None,
    tokenizer: NeuroQTokenizer,
    callbacks: Sequence[MetricsCallback] = (),
) -> TrainResult:
    """Train a NeuroQ on ``(x, y)`` blocks and write checkpoints under ``config.out_dir``.

    ``out_dir/last`` is a training checkpoint (optimizer state included) written every ``ckpt_interval``
    steps and at the end; ``out_dir/final`` is the exported model. Under ``torchrun`` (WORLD_SIZE > 1) each
    process trains on its own blocks with DDP; only rank 0 writes files and calls ``callbacks``.
    """
    cfg = config
    ddp = _init_distributed(cfg.device)
    try:
        return _train(cfg, train_blocks, val_blocks, tokenizer, callbacks, ddp)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, train_blocks: Dataset, val_blocks: Dataset | None, tokenizer: NeuroQTokenizer,
           callbacks: Sequence[MetricsCallback], ddp: _Dist) -> TrainResult:
    _check_data(cfg, train_blocks, val_blocks, tokenizer)
    device = _resolve_device(cfg, ddp)
    dtype = _resolve_dtype(cfg, device)
    out_dir = Path(cfg.out_dir)
    last_path = out_dir / LAST_CHECKPOINT

    if cfg.resume:
        if ddp.is_main:
            resume_step(cfg)  # for its repair of a save a killed run left half done
        if ddp.world_size > 1:
            dist.barrier()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every rerun
    state: dict[str, Any] | None = None
    if cfg.resume and (last_path / "config.json").exists():
        model, state = _restore(cfg, last_path, tokenizer)
    else:
        if cfg.resume:
            logger.warning("resume requested but %s holds no checkpoint: starting from scratch", last_path)
        model = NeuroQ(cfg.model)
    model.to(device)
    # Built after the move so that optimizer state (loaded or new) lives on the parameters' device.
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, cfg.betas, device.type)
    start_step, tokens_seen, best_val = 0, 0, math.inf
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{last_path}: the optimizer state does not fit this model: {exc}") from exc
        start_step, tokens_seen, best_val = int(state["step"]), int(state["tokens_seen"]), float(state["best_val_loss"])

    train_model: torch.nn.Module = model
    if ddp.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]

    sampler = StepBatchSampler(len(train_blocks), cfg.batch_size, seed=cfg.seed, start_step=start_step,  # type: ignore[arg-type]
                               max_steps=cfg.max_steps, grad_accum_steps=cfg.grad_accum_steps, rank=ddp.rank,
                               world_size=ddp.world_size)
    # A private generator: DataLoader otherwise draws its worker seed from the global RNG, shifting dropout.
    loader = DataLoader(train_blocks, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * ddp.world_size * cfg.block_size  # type: ignore[operator]
    n_params = model.num_params()
    if ddp.is_main:
        logger.info("training %s NeuroQ (%.2fM non-embedding params) on %s/%s, world %d, steps %d..%d, "
                    "%d tokens/step", cfg.model.mode, n_params / 1e6, device, str(dtype).replace("torch.", ""),
                    ddp.world_size, start_step, cfg.max_steps, tokens_per_step)

    history: list[dict[str, float]] = []

    def emit(metrics: dict[str, float], step: int) -> None:
        history.append({"step": float(step), **metrics})
        for cb in callbacks:
            cb(metrics, step)

    def validate() -> float | None:
        if val_blocks is None:
            return None
        return _validate(model, val_blocks, cfg, device, dtype, ddp)

    progress = _progress_bar(cfg, ddp, start_step)
    batches = iter(loader)
    model.train()
    train_time = 0.0
    window_loss = torch.zeros((), device=device)
    window_steps = 0
    window_t0 = time.perf_counter()
    last_loss: float | None = None
    val_loss: float | None = None
    step = start_step
    try:
        while step < cfg.max_steps:
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _reseed(cfg, step, ddp.rank)
            for micro in range(cfg.grad_accum_steps):
                x, y = next(batches)
                x = x.to(device, non_blocking=True).long()
                y = y.to(device, non_blocking=True).long()
                # Gradients are all-reduced once per optimizer step, on the last micro-batch.
                sync = micro == cfg.grad_accum_steps - 1 or ddp.world_size == 1
                with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast:  # type: ignore[operator]
                    out = train_model(x, y)
                    loss = out.loss / cfg.grad_accum_steps
                    objective = loss
                    if cfg.z_loss:
                        objective = loss + cfg.z_loss * z_loss(out.logits, y) / cfg.grad_accum_steps
                objective.backward()
                window_loss += loss.detach()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                         else None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            window_steps += 1
            progress.update(1)

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                if ddp.world_size > 1:
                    dist.all_reduce(window_loss)
                    window_loss /= ddp.world_size
                last_loss = window_loss.item() / window_steps  # .item() also syncs CUDA, so the timing is honest
                elapsed = time.perf_counter() - window_t0
                train_time += elapsed
                tps = window_steps * tokens_per_step / elapsed
                metrics = {"train_loss": last_loss, "lr": lr, "tokens_per_s": tps, "tokens_seen": float(tokens_seen)}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if ddp.is_main:
                    emit(metrics, step)
                    progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                    logger.debug("step %d loss %.4f lr %.3e %.0f tok/s", step, last_loss, lr, tps)
                window_loss.zero_()
                window_steps = 0
                window_t0 = time.perf_counter()

            # Evaluation and checkpoint time is moved out of the throughput window: it is not training time.
            at_end = step == cfg.max_steps
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or at_end:
                pause = time.perf_counter()
                val_loss = validate()
                if val_loss is not None:
                    best_val = min(best_val, val_loss)
                    if ddp.is_main:
                        emit({"val_loss": val_loss, "val_perplexity": _ppl(val_loss)}, step)
                        logger.info("step %d: val loss %.4f (perplexity %.2f)", step, val_loss, _ppl(val_loss))
                window_t0 += time.perf_counter() - pause
            if (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or at_end:
                pause = time.perf_counter()
                if ddp.is_main:
                    _save_training_checkpoint(last_path, model, optimizer, tokenizer, cfg, step, tokens_seen,
                                              best_val, val_loss)
                window_t0 += time.perf_counter() - pause
    finally:
        progress.close()

    if start_step == cfg.max_steps:
        # Nothing left to train (resuming a finished run): still report and export the model.
        val_loss = validate()
        if val_loss is not None:
            best_val = min(best_val, val_loss)
    final_path = None
    if ddp.is_main:
        final_path = save_checkpoint(out_dir / FINAL_CHECKPOINT, model, tokenizer,
                                     extra=_extra(cfg, step, tokens_seen, best_val, val_loss))
        logger.info("exported %s", final_path)
    if ddp.world_size > 1:
        dist.barrier()
    return TrainResult(
        steps=step,
        tokens_seen=tokens_seen,
        tokens_per_s=(step - start_step) * tokens_per_step / train_time if train_time > 0 else 0.0,
        train_loss=last_loss,
        final_val_loss=val_loss,
        best_val_loss=best_val if math.isfinite(best_val) else None,
        checkpoint_path=final_path,
        last_checkpoint_path=last_path if ddp.is_main else None,
        parameters=n_params,
        device=f"{device}/{str(dtype).replace('torch.', '')}",
        history=history,
    )


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _progress_bar(cfg: TrainConfig, ddp: _Dist, start_step: int) -> Any:
    from tqdm.auto import tqdm

    # disable=None lets tqdm hide itself when stderr is not a terminal (CI logs, KFP pods).
    disable = None if (cfg.progress and ddp.is_main) else True
    return tqdm(total=cfg.max_steps, initial=start_step, disable=disable, desc="train", unit="step",
                dynamic_ncols=True)


def _validate(model: NeuroQ, val_blocks: Dataset, cfg: TrainConfig, device: torch.device, dtype: torch.dtype,
              ddp: _Dist) -> float:
    n = len(val_blocks)  # type: ignore[arg-type]
    if cfg.eval_batches is not None:
        n = min(n, cfg.eval_batches * cfg.batch_size)
    # The same first n blocks every time, split across ranks; the sums make the mean independent of world size.
    shard = torch.utils.data.Subset(val_blocks, range(ddp.rank, n, ddp.world_size))
    if len(shard):
        r = evaluate_blocks(model, shard, cfg.batch_size, device, autocast_dtype=dtype)
        sums = torch.tensor([r["loss"] * r["n_tokens"], r["n_tokens"]], dtype=torch.float64, device=device)
    else:
        sums = torch.zeros(2, dtype=torch.float64, device=device)
    if ddp.world_size > 1:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1])


def _extra(cfg: TrainConfig, step: int, tokens_seen: int, best_val: float, val_loss: float | None) -> dict[str, Any]:
    return {
        "train_config": cfg.to_dict(),
        "step": step,
        "tokens_seen": tokens_seen,
        "val_loss": val_loss,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
    }


def training_state(optimizer: torch.optim.Optimizer, step: int, tokens_seen: int, best_val: float) -> dict[str, Any]:
    """What a training checkpoint holds besides the weights: enough to resume exactly (see `_restore`)."""
    return {
        "step": step,
        "tokens_seen": tokens_seen,
        "best_val_loss": best_val,
        "optimizer": optimizer.state_dict(),
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def _save_training_checkpoint(path: Path, model: NeuroQ, optimizer: torch.optim.Optimizer,
                              tokenizer: NeuroQTokenizer, cfg: TrainConfig, step: int, tokens_seen: int,
                              best_val: float, val_loss: float | None) -> None:
    save_checkpoint(path, model, tokenizer, training_state=training_state(optimizer, step, tokens_seen, best_val),
                    extra=_extra(cfg, step, tokens_seen, best_val, val_loss))
    logger.debug("checkpoint %s at step %d", path, step)


def _restore(cfg: TrainConfig, path: Path, tokenizer: NeuroQTokenizer) -> tuple[NeuroQ, dict[str, Any]]:
    """The model and training state of the checkpoint at ``path``, after checking it belongs to this run."""
    ckpt = load_checkpoint(path, device="cpu", with_training_state=True)
    if ckpt.config != cfg.model:
        diffs = [f"{k}: checkpoint {v!r} vs config {getattr(cfg.model, k)!r}"
                 for k, v in ckpt.config.to_dict().items() if getattr(cfg.model, k) != v]
        raise ConfigError(f"cannot resume from {path}: it was trained with another model config ({'; '.join(diffs)}); "
                          "use another out_dir or the same model settings")
    if ckpt.tokenizer.to_bytes() != tokenizer.to_bytes():
        raise ConfigError(f"cannot resume from {path}: it was trained with another tokenizer; pass the tokenizer "
                          f"saved in {path}")
    previous = ckpt.extra.get("train_config", {})
    changed = [k for k in ("batch_size", "grad_accum_steps", "block_size", "seed")
               if k in previous and previous[k] != getattr(cfg, k)]
    if changed:
        logger.warning("resuming with changed %s: the data order differs from the original run", ", ".join(changed))
    state = ckpt.training_state
    assert state is not None
    # Training reseeds every step; the saved stream is restored for whatever runs outside the steps (callbacks).
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] and torch.cuda.is_available() and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    logger.info("resuming from %s at step %d", path, state["step"])
    ckpt.model.train()
    return ckpt.model, state
