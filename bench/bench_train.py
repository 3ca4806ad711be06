"""Training throughput, MFU and learning efficiency of NeuroQ layered / brain against a plain GPT.

Markdown tables:

1. Training tokens/s (forward + backward + AdamW step, the same autocast, clipping and optimizer as
   ``neuroq.train``) on random tokens, warm-up steps excluded, and the achieved FLOP/s (``NeuroQ.flops_per_token``
   x tokens/s) beside gpt's: the QBNN terms cost no more than their arithmetic when that ratio is ~1. On CUDA also
   MFU at bf16 against ``--peak-flops`` (H100 SXM dense bf16: 989 TFLOP/s) using ``NeuroQ.estimate_mfu``.
   ``--profile`` adds, per mode, the top kernels by self time (torch.profiler) over a few more steps.
2. Validation bits per character of the three models after the same token budget on the Aozora corpus, trained
   with ``neuroq.train.train`` itself (skipped with a message when the corpus is absent).

``--presets base large`` measures those ``NeuroQConfig`` presets (context 1024) instead of the flags' size, one
table each, and ``--sizes`` prints what each preset costs: parameters, FLOPs per token, training activation and
KV-cache memory per sequence (measured, bf16), weights + AdamW state.

"Same size": all three share the skeleton of the spec's layered default (``--n-embd 256 --n-ff 512 --n-head 8
--n-layer 6``, context 256, vocabulary 8000), so they differ only by their QBNN terms: ``gpt`` is exactly the
shared path (attention + FFN), ``layered`` adds the entanglement attention term and the QBNN branch, ``brain``
adds the neuron-layer refinement of q/k and the neuron-layer branch. The parameter and FLOP columns show what
those terms cost; the brain spec's own (smaller) default is a preset, not used here.

    python -m bench.bench_train --device cpu --steps 10 --budget-tokens 200000 --corpus-chars 2000000
    python -m bench.bench_train --device cuda --steps 50 --budget-tokens 20000000 --compile

The presets on the 2-core CPU (fp32, one 1024-token sequence per step) and the sizes table:

    python -m bench.bench_train --device cpu --presets base --batch-size 1 --steps 10 --warmup 2 --profile --skip-bpc
    python -m bench.bench_train --sizes

The GPU run the issue asks for (H100, bf16, compiled; base and large, the three modes, profiles), one command,
about 5 minutes on one H100 (most of it compilation):

    python -m bench.bench_train --device cuda --presets base large --compile --steps 20 --profile --skip-bpc
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from neuroq.checkpoint import load_checkpoint
from neuroq.data import split_documents
from neuroq.evaluate import score_text, unigram_bits_per_char
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.shards import PackedBlocks, write_token_shards
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from neuroq.train import TrainConfig, train

logger = logging.getLogger("bench.bench_train")

MODES = ("gpt", "layered", "brain")
H100_BF16_DENSE = 989e12
DEFAULT_AOZORA = Path(os.environ.get("NEUROQ_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) / \
    "aozora" / "aozora_pd.jsonl.gz"


def model_config(args: argparse.Namespace, mode: str, vocab_size: int, preset: str | None = None) -> NeuroQConfig:
    """The flags' size, or a preset's (its own context) when ``preset`` is given."""
    if preset:
        return NeuroQConfig.preset(preset, mode=mode, vocab_size=vocab_size, dropout=0.0)
    return NeuroQConfig(mode=mode, vocab_size=vocab_size, n_embd=args.n_embd, n_ff=args.n_ff, n_head=args.n_head,
                        n_layer=args.n_layer, max_seq_len=args.block_size, dropout=0.0)


def autocast(device: str) -> contextlib.AbstractContextManager[object]:
    # bf16 autocast on CUDA as neuroq.train does by default; fp32 on CPU.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model's training step on random tokens of its full context (the same autocast, clipping and optimizer
    as ``neuroq.train``); the data for every step it will take is drawn up front."""

    def __init__(self, args: argparse.Namespace, config: NeuroQConfig):
        torch.manual_seed(0)
        self.args = args
        self.model = NeuroQ(config).to(args.device)
        self.optimizer = self.model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), args.device)
        self.step_model = torch.compile(self.model) if args.compile else self.model
        self.tokens_per_step = args.batch_size * config.max_seq_len
        n_steps = args.warmup + args.steps + (args.profile_steps if args.profile else 0)
        gen = torch.Generator().manual_seed(0)
        self.data = torch.randint(6, config.vocab_size, (n_steps, args.batch_size, config.max_seq_len + 1),
                                  generator=gen)
        if args.device == "cuda":
            self.data = self.data.pin_memory()  # as neuroq.train's loader: the copy overlaps the previous step
        self.taken = 0

    def step(self) -> None:
        batch = self.data[self.taken].to(self.args.device, non_blocking=True)
        self.taken += 1
        with autocast(self.args.device):
            loss = self.step_model(batch[:, :-1], batch[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self) -> float:
        sync(self.args.device)
        start = time.perf_counter()
        self.step()
        sync(self.args.device)
        return time.perf_counter() - start


def throughput(args: argparse.Namespace, configs: dict[str, NeuroQConfig]) -> dict[str, dict[str, Any]]:
    """Training tokens/s of each mode after ``args.warmup`` untimed steps (compile, caches); with
    ``args.profile``, the top kernels of ``args.profile_steps`` more steps.

    The timed steps are interleaved (gpt, layered, brain, gpt, ...), so a load that comes and goes on a shared
    machine slows every mode alike, and each mode's rate is taken from its median step, so a neighbour's burst
    during a few steps does not move it: timed one mode after another with the mean, a 2-core machine's
    neighbours moved gpt alone by 12% between two runs.
    """
    trainers = {mode: Trainer(args, config) for mode, config in configs.items()}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
    times: dict[str, list[float]] = {mode: [] for mode in trainers}
    for _ in range(args.steps):
        for mode, trainer in trainers.items():
            times[mode].append(trainer.timed_step())
    rows: dict[str, dict[str, Any]] = {}
    for mode, trainer in trainers.items():
        model = trainer.model
        step_s = statistics.median(times[mode])
        tps = trainer.tokens_per_step / step_s
        row: dict[str, Any] = {
            "params": float(model.num_params(non_embedding=False)),
            "non_embedding": float(model.num_params()),
            "flops_per_token": model.flops_per_token(),
            "tokens_per_s": tps,
            "flops_per_s": model.flops_per_token() * tps,
            "step_ms": 1000 * step_s,
        }
        if args.device == "cuda" or args.peak_flops:
            row["mfu"] = model.estimate_mfu(tps, args.peak_flops or H100_BF16_DENSE)
        if args.profile:
            row["profile"] = profile_steps(args, trainer.step)
        rows[mode] = row
        logger.info("%s: %.0f tokens/s", mode, tps)
    return rows


def profile_steps(args: argparse.Namespace, step: Callable[[], None]) -> list[tuple[str, float, int]]:
    """``(op, share of the steps' self time, calls)`` of the ``args.profile_top`` ops with the most self time
    (device time on CUDA: the kernels; CPU time otherwise) over ``args.profile_steps`` steps."""
    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            step()
        sync(args.device)
    events = prof.key_averages()

    def self_time(e: Any) -> float:
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    total = sum(self_time(e) for e in events) or 1.0
    top = sorted(events, key=self_time, reverse=True)[: args.profile_top]
    return [(e.key, self_time(e) / total, e.count // args.profile_steps) for e in top]


def throughput_table(args: argparse.Namespace, preset: str | None = None) -> str:
    configs = {mode: model_config(args, mode, args.vocab_size, preset) for mode in args.modes}
    first = next(iter(configs.values()))
    size = (f"preset {preset} (E{first.n_embd}, F{first.n_ff}, {first.n_head} heads, {first.n_layer} layers)"
            if preset else f"E{first.n_embd}, F{first.n_ff}, {first.n_head} heads, {first.n_layer} layers")
    lines = [
        f"Training throughput: {size}, {args.device}, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}, "
        f"batch {args.batch_size} x {first.max_seq_len} tokens, median of {args.steps} timed steps per mode "
        f"(interleaved) after {args.warmup} warm-up"
        f"{', torch.compile' if args.compile else ''}"
        + (f", {torch.get_num_threads()} CPU threads" if args.device == "cpu" else f", {torch.cuda.get_device_name()}"),
        "",
        "| mode | params (M) | non-emb. params (M) | GFLOP/token | tokens/s | median ms/step | achieved TFLOP/s "
        "| tokens/s vs gpt | FLOP/s vs gpt | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = throughput(args, configs)
    gpt = rows.get("gpt")
    for mode, r in rows.items():
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
        rel = f"{r['tokens_per_s'] / gpt['tokens_per_s']:.2f}x" if gpt else "n/a"
        rel_flops = f"{r['flops_per_s'] / gpt['flops_per_s']:.2f}x" if gpt else "n/a"
        lines.append(f"| {mode} | {r['params'] / 1e6:.2f} | {r['non_embedding'] / 1e6:.2f} | "
                     f"{r['flops_per_token'] / 1e9:.3f} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                     f"{r['flops_per_s'] / 1e12:.3f} | {rel} | {rel_flops} | {mfu} |")
    for mode, r in rows.items():
        if "profile" in r:
            lines += ["", f"Top ops of {mode} by self {'device' if args.device == 'cuda' else 'CPU'} time over "
                      f"{args.profile_steps} steps:", "", "| op | share | calls/step |", "| --- | ---: | ---: |"]
            lines += [f"| `{name}` | {100 * share:.1f}% | {calls} |" for name, share, calls in r["profile"]]
    return "\n".join(lines)


def sizes_table(args: argparse.Namespace) -> str:
    """What each preset costs per mode: parameters, FLOPs/token, and memory per sequence at its full context."""
    lines = [
        f"Preset sizes at vocabulary {args.vocab_size}: training activations per sequence measured (bytes autograd "
        "saves for the backward of one full-context sequence, bf16 autocast, flash-style attention); KV cache per "
        "sequence in bf16; weights + gradients + AdamW moments in fp32 (16 bytes per parameter).",
        "",
        "| preset | mode | context | params (M) | non-emb. params (M) | GFLOP/token (train) | activations MiB/seq "
        "| KV cache MiB/seq | weights + AdamW GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset in args.presets or ["base", "large"]:
        for mode in args.modes:
            config = model_config(args, mode, args.vocab_size, preset)
            torch.manual_seed(0)
            model = NeuroQ(config)
            idx = torch.randint(6, config.vocab_size, (1, config.max_seq_len))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                activations = saved_bytes(lambda: model(idx[:, :-1], idx[:, 1:]).loss)
                past = model(idx[:, :1], use_cache=True).past_key_values
            assert past is not None
            kv = sum(k.element_size() * k[0].numel() + v.element_size() * v[0].numel() for k, v in past)
            kv *= config.max_seq_len  # the cache of one token, times the context
            lines.append(f"| {preset} | {mode} | {config.max_seq_len} "
                         f"| {model.num_params(non_embedding=False) / 1e6:.1f} | {model.num_params() / 1e6:.1f} "
                         f"| {model.flops_per_token() / 1e9:.3f} "
                         f"| {activations / 2**20:,.0f} | {kv / 2**20:.1f} "
                         f"| {16 * model.num_params(non_embedding=False) / 2**30:.2f} |")
    return "\n".join(lines)


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of ``forward()`` (parameters excluded)."""
    storages: dict[int, int] = {}
    parameter_storages: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if not isinstance(t, torch.nn.Parameter):
            storages[storage.data_ptr()] = storage.nbytes()
        else:
            parameter_storages.add(storage.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(n for ptr, n in storages.items() if ptr not in parameter_storages)


# ------------------------------------------------------------------------------------------ learning efficiency


def aozora_docs(path: Path, max_chars: int) -> Iterator[str]:
    """Works of the Aozora corpus in file order, stopping after ``max_chars`` characters (0 = all)."""
    seen = 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if text:
                yield text
                seen += len(text)
                if max_chars and seen >= max_chars:
                    return


def bits_per_char_table(args: argparse.Namespace, work: Path) -> str:
    docs = list(aozora_docs(args.aozora, args.corpus_chars))
    train_docs, val_docs = split_documents(docs, val_fraction=args.val_fraction)
    scored_docs, n = [], 0
    for doc in val_docs:  # a bounded, fixed slice of the held-out works, the same for every model
        scored_docs.append(doc[: args.eval_chars - n])
        n += len(scored_docs[-1])
        if n >= args.eval_chars:
            break
    t0 = time.perf_counter()
    tokenizer = NeuroQTokenizer.train(train_docs, TokenizerConfig(vocab_size=args.vocab_size))
    write_token_shards(train_docs, tokenizer, work / "train")
    write_token_shards(val_docs, tokenizer, work / "val")
    train_blocks = PackedBlocks(work / "train", args.block_size)
    val_blocks = PackedBlocks(work / "val", args.block_size)
    logger.info("tokenizer and shards in %.0f s: %d train tokens, %d val tokens", time.perf_counter() - t0,
                train_blocks.n_tokens, val_blocks.n_tokens)
    unigram = unigram_bits_per_char(train_blocks.tokens(0, train_blocks.n_tokens), scored_docs, tokenizer)

    tokens_per_step = args.train_batch_size * args.block_size
    steps = max(1, args.budget_tokens // tokens_per_step)
    lines = [
        f"Validation bits/char on Aozora after {steps * tokens_per_step:,} training tokens each ({steps} steps of "
        f"{args.train_batch_size} x {args.block_size}; {len(train_docs)} works / {train_blocks.n_tokens:,} tokens for "
        f"training, {n:,} held-out characters scored; vocabulary {tokenizer.vocab_size}; {args.device})",
        "",
        "| model | val loss (nats/token) | val bits/char | vs unigram | train tokens/s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| unigram (add-one) | | {unigram:.3f} | 1.00x | | |",
    ]
    for mode in args.modes:
        cfg = TrainConfig(
            model=dataclasses.replace(model_config(args, mode, tokenizer.vocab_size), dropout=0.1),
            out_dir=str(work / mode), max_steps=steps, batch_size=args.train_batch_size, lr=args.lr,
            warmup_steps=min(200, steps // 10), eval_interval=0, eval_batches=args.eval_batches, ckpt_interval=0,
            log_interval=max(1, steps // 10), seed=0, device=args.device, compile=args.compile, progress=False,
        )
        t0 = time.perf_counter()
        result = train(cfg, train_blocks, val_blocks, tokenizer)
        wall = time.perf_counter() - t0
        model = load_checkpoint(result.checkpoint_path, device=args.device).model
        dtype = torch.bfloat16 if args.device == "cuda" else None
        scores = score_text(model, tokenizer, scored_docs, batch_size=32, autocast_dtype=dtype)
        lines.append(f"| {mode} | {scores['loss']:.3f} | {scores['bits_per_char']:.3f} | "
                     f"{scores['bits_per_char'] / unigram:.2f}x | {result.tokens_per_s:,.0f} | {wall:.0f} |")
        logger.info("%s done: %s", mode, lines[-1])
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (throughput table)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (compilation, allocator)")
    p.add_argument("--batch-size", type=int, help="throughput batch (default: 64 on CUDA, 8 on CPU; with --presets "
                                                  "16 on CUDA, 1 on CPU: 16k tokens of context 1024 per step)")
    p.add_argument("--presets", nargs="+", metavar="PRESET",
                   help="measure these NeuroQConfig presets (e.g. base large) instead of the size flags below")
    p.add_argument("--sizes", action="store_true", help="print the presets' sizes and memory per sequence, then exit")
    p.add_argument("--profile", action="store_true", help="add each mode's top ops by self time (torch.profiler)")
    p.add_argument("--profile-steps", type=int, default=2, help="steps profiled after the timed ones (default 2)")
    p.add_argument("--profile-top", type=int, default=8, help="ops listed per mode (default 8)")
    p.add_argument("--block-size", type=int, default=256, help="tokens per sequence = context (default 256)")
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-ff", type=int, default=512)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--peak-flops", type=float, help="hardware peak for MFU (default: H100 bf16 dense, 989e12)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--aozora", type=Path, default=DEFAULT_AOZORA,
                   help="aozora_pd.jsonl.gz (default: under $NEUROQ_DATA_DIR, else shared/data beside the checkout)")
    p.add_argument("--skip-bpc", action="store_true", help="throughput table only")
    p.add_argument("--budget-tokens", type=int, help="training tokens per model (default: 20M CUDA, 200k CPU)")
    p.add_argument("--train-batch-size", type=int, help="batch of the bits/char runs (default: 64 CUDA, 8 CPU)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--corpus-chars", type=int, help="read at most this many Aozora characters (default: all on "
                                                    "CUDA, 2M on CPU)")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--eval-chars", type=int, help="held-out characters scored (default: 200k CUDA, 20k CPU)")
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--work-dir", type=Path, help="where tokenizer, shards and checkpoints go (default: a temp dir)")
    args = p.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    args.batch_size = args.batch_size or ((16 if cuda else 1) if args.presets else (64 if cuda else 8))
    args.train_batch_size = args.train_batch_size or (64 if cuda else 8)
    args.budget_tokens = args.budget_tokens or (20_000_000 if cuda else 200_000)
    args.corpus_chars = args.corpus_chars if args.corpus_chars is not None else (0 if cuda else 2_000_000)
    args.eval_chars = args.eval_chars or (200_000 if cuda else 20_000)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("neuroq.train").setLevel(logging.WARNING)
    if not cuda:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if args.sizes:
        print(sizes_table(args), flush=True)
        return
    for preset in args.presets or [None]:
        print(throughput_table(args, preset), flush=True)
        print()
    if args.skip_bpc:
        return
    if not args.aozora.is_file():
        print(f"Skipping the bits/char table: {args.aozora} not found (set --aozora or NEUROQ_DATA_DIR to the "
              "folder holding aozora/aozora_pd.jsonl.gz).")
        return
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_train_")))
        print(bits_per_char_table(args, work), flush=True)


if __name__ == "__main__":
    main()
