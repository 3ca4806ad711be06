"""CPU (or GPU) time per training token of the old and the new training defaults (issue 18), side by side.

The issue's target holds the new defaults to the old ones' CPU time or less for the same tokens. The two differ in
what costs time per token (batch 16 against 32, no dropout masks, no position table), so they are timed here in
one process, one optimizer step of each in turn on random tokens (as bench_train interleaves its modes: timed one
after the other, a neighbour's load moves one side only), and each is rated by its median step. A step is what
neuroq.train's loop does for one batch: forward with targets, backward, gradient clipping, AdamW step.

    python -m bench.bench_defaults                  # the original's size, E128 4 layers, context 128
    python -m bench.bench_defaults --n-embd 256 --n-ff 512 --n-head 8 --n-layer 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.train import TrainConfig

# The defaults before issue 18 (NeuroQConfig / TrainConfig until 2026-12-06), to compare against today's.
OLD_MODEL = {"position": "learned", "dropout": 0.1}
OLD_TRAIN = {"batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.1, "betas": (0.9, 0.95),
             "grad_clip": 1.0}


def build(size: dict, old: bool, device: torch.device) -> tuple[NeuroQ, TrainConfig, torch.optim.Optimizer]:
    model_cfg = NeuroQConfig(**size, **(OLD_MODEL if old else {}))
    cfg = TrainConfig(model=model_cfg, **(OLD_TRAIN if old else {}))
    torch.manual_seed(0)
    model = NeuroQ(model_cfg).to(device).train()
    return model, cfg, model.configure_optimizer(cfg.weight_decay, cfg.lr, cfg.betas, device.type)


def step(model: NeuroQ, cfg: TrainConfig, optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    batch = torch.randint(0, model.config.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=device)
    start = time.perf_counter()
    loss = model(batch[:, :-1], batch[:, 1:]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-ff", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each (default %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each first (default %(default)s)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    size = {"n_embd": args.n_embd, "n_ff": args.n_ff, "n_head": args.n_head, "n_layer": args.n_layer,
            "max_seq_len": args.context, "vocab_size": args.vocab_size}
    runs = {name: build(size, old, device) for name, old in (("old defaults", True), ("new defaults", False))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        for name, (model, cfg, opt) in runs.items():
            elapsed = step(model, cfg, opt, device)
            if i >= args.warmup:
                times[name].append(elapsed)
    per_token = {name: statistics.median(times[name]) / (runs[name][1].batch_size * args.context) for name in runs}
    print(f"E{args.n_embd} F{args.n_ff} H{args.n_head} L{args.n_layer} T{args.context} V{args.vocab_size}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps")
    print("| defaults | batch | ms / step | tokens/s | time per token vs old |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (_, cfg, _) in runs.items():
        ms = statistics.median(times[name]) * 1e3
        print(f"| {name} | {cfg.batch_size} | {ms:.1f} | {1 / per_token[name]:,.0f} | "
              f"{per_token[name] / per_token['old defaults']:.2f}x |")


if __name__ == "__main__":
    main()
