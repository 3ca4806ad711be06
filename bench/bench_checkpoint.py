"""What a training checkpoint costs, to choose `ckpt_interval`: save and load time and size by model size.

A training checkpoint (`OUT_DIR/last`, what `train_neuroq` writes to `checkpoint_dir` every `ckpt_interval` steps)
holds the weights, the AdamW state and the RNG state, written to a temporary directory, fsynced and swapped in
(`neuroq.checkpoint.save_checkpoint`). Training stops while it is written, so the cost per step is the save time
divided by `ckpt_interval`; a retry loses at most `ckpt_interval` steps and pays one load.

    python -m bench.bench_checkpoint                       # into a temporary folder on the default disk
    python -m bench.bench_checkpoint --dir /mnt/pvc/bench  # the disk the checkpoints will live on
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from neuroq.checkpoint import load_checkpoint, save_checkpoint
from neuroq.corpus import bundled_dialogues
from neuroq.model import NeuroQ, NeuroQConfig
from neuroq.tokenizer import NeuroQTokenizer, TokenizerConfig
from neuroq.train import training_state

# (label, n_embd, n_ff, n_head, n_layer): the pipeline's default, the spec's layered default, and a larger one.
SIZES = (
    ("pipeline default", 64, 128, 4, 2),
    ("spec layered", 256, 512, 8, 6),
    ("512 x 8", 512, 2048, 8, 8),
)


def state_after_one_step(model: NeuroQ) -> dict:
    """The state `neuroq.train` saves, after one optimizer step so that AdamW's moments exist."""
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    model(ids, targets=ids).loss.backward()
    optimizer.step()
    return training_state(optimizer, step=1, tokens_seen=ids.numel(), best_val=1.0)


def measure(root: Path, tokenizer: NeuroQTokenizer, label: str, n_embd: int, n_ff: int, n_head: int, n_layer: int,
            repeats: int) -> dict:
    torch.manual_seed(0)
    model = NeuroQ(NeuroQConfig(vocab_size=tokenizer.vocab_size, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                                n_layer=n_layer, max_seq_len=256))
    state = state_after_one_step(model)
    path = root / label.replace(" ", "-")
    saves, loads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        save_checkpoint(path, model, tokenizer, training_state=state, extra={"step": 1})
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        load_checkpoint(path, with_training_state=True)
        loads.append(time.perf_counter() - started)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"label": label, "params": sum(p.numel() for p in model.parameters()), "bytes": size,
            "save_s": statistics.median(saves), "load_s": statistics.median(loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="saves and loads per size; the median is shown")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = NeuroQTokenizer.train(bundled_dialogues(), TokenizerConfig(vocab_size=2000, num_threads=1))
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        rows = [measure(Path(scratch), tokenizer, *size, repeats=args.repeats) for size in SIZES]
    print(f"training checkpoint (weights + AdamW + RNG), vocabulary {tokenizer.vocab_size}, median of "
          f"{args.repeats}, in {args.dir or tempfile.gettempdir()}\n")
    print("| model | parameters | size | save (fsync, swap) | load (verified) | save MB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['label']} | {row['params'] / 1e6:.2f} M | {row['bytes'] / 1e6:.1f} MB | "
              f"{row['save_s'] * 1000:.0f} ms | {row['load_s'] * 1000:.0f} ms | "
              f"{row['bytes'] / 1e6 / row['save_s']:.0f} |")


if __name__ == "__main__":
    main()
