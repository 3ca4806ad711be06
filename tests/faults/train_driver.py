"""Train in a subprocess and SIGKILL it at a chosen point: the fault-injection side of tests/faults/test_train_kill.py.

    python -m tests.faults.train_driver DATA_ROOT CONFIG_JSON LOSSES_JSONL [--kill MODE --at STEP]

DATA_ROOT holds tokenizer.model and train/ val/ token shards; every train_loss is appended to LOSSES_JSONL (and
flushed) as it is reported, so the parent sees exactly what the process computed before it died. The kill comes
from inside the process at a deterministic point, by wrapping the real library functions; the product has no
test hooks:

- mid-step: in the forward pass of optimizer step STEP + 1, after step STEP was reported;
- mid-write: while the `last` checkpoint of step STEP is written: one file whole, the next one half, then kill;
- between-renames: on a filesystem without an atomic exchange, after `last` was moved aside and before the new
  checkpoint took its name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

import torch

import neuroq.checkpoint as checkpoint
from neuroq.model import NeuroQ
from neuroq.shards import PackedBlocks
from neuroq.tokenizer import NeuroQTokenizer
from neuroq.train import LAST_CHECKPOINT, TrainConfig, train

KILL_MODES = ("mid-step", "mid-write", "between-renames")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Faults:
    """The wrappers; `step` is the last optimizer step the training loop reported."""

    def __init__(self, mode: str, at: int) -> None:
        self.mode, self.at, self.step = mode, at, 0
        self.files_written = 0

    def install(self) -> None:
        if self.mode == "mid-step":
            forward = NeuroQ.forward

            def forward_then_die(model, *args, **kwargs):
                if model.training and self.step == self.at:
                    _die()
                return forward(model, *args, **kwargs)

            NeuroQ.forward = forward_then_die
        elif self.mode == "mid-write":
            write = checkpoint._write_bytes

            def write_then_die(path: Path, data: bytes) -> None:
                if self._saving_last(path.parent.name):
                    self.files_written += 1
                    if self.files_written == 2:
                        write(path, data[: len(data) // 2])
                        _die()
                write(path, data)

            checkpoint._write_bytes = write_then_die
        elif self.mode == "between-renames":
            rename = os.rename
            checkpoint._rename_exchange = lambda a, b: False

            def rename_then_die(src, dst) -> None:
                if Path(dst).name == LAST_CHECKPOINT and self._saving_last(Path(src).name):
                    _die()
                rename(src, dst)

            os.rename = rename_then_die

    def _saving_last(self, name: str) -> bool:
        return name.startswith(f".{LAST_CHECKPOINT}.tmp-") and self.step == self.at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_root", type=Path)
    parser.add_argument("config_json")
    parser.add_argument("losses", type=Path)
    parser.add_argument("--kill", choices=KILL_MODES)
    parser.add_argument("--at", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # the same reduction order in every process: losses compare exactly

    faults = Faults(args.kill, args.at) if args.kill else None
    if faults:
        faults.install()
    config = TrainConfig(**json.loads(args.config_json))
    with args.losses.open("a", encoding="utf-8") as out:

        def record(metrics: dict[str, float], step: int) -> None:
            if faults:
                faults.step = step
            if "train_loss" in metrics:
                out.write(json.dumps({"step": step, "train_loss": metrics["train_loss"]}) + "\n")
                out.flush()

        root = args.data_root
        train(config, PackedBlocks(root / "train", config.block_size), PackedBlocks(root / "val", config.block_size),
              NeuroQTokenizer.load(root / "tokenizer.model"), callbacks=[record])


if __name__ == "__main__":
    main()
