"""`train_neuroq` on several GPUs of one pod: the step starts `torchrun --standalone --nproc-per-node N` on this
module and waits for it.

Each process joins the process group torchrun describes (`neuroq.train` runs DDP when WORLD_SIZE > 1: one GPU per
local rank, NCCL; gloo on a machine without CUDA) and trains on its share of the token blocks the step wrote.
Rank 0 alone logs the per-step metrics into the step's MLflow run, exports the checkpoint and writes the
`TrainResult` back for the step, with the metrics MLflow did not take (it was down), which the step then sends as
after an in-process run.

    python -m torch.distributed.run --standalone --nproc-per-node 4 -m components.steps.torchrun SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric

from neuroq.errors import NeuroQError
from neuroq.train import TrainConfig, TrainResult
from components.steps.training_metrics import TrainingMetricsLogger

__all__ = ["TorchrunError", "TorchrunSpec", "launch", "main"]


class TorchrunError(NeuroQError):
    """The torchrun launch failed; its processes' output is in the step's log, above this error."""


@dataclass(frozen=True)
class TorchrunSpec:
    """What every process needs, written to a JSON file that torchrun hands to each of them."""

    config: dict  # TrainConfig.to_dict()
    train_tokens: str  # token shard folders (neuroq.shards.write_token_shards)
    val_tokens: str
    tokenizer: str
    tracking_uri: str
    run_id: str  # the step's MLflow run: rank 0 logs into it
    result: str  # where rank 0 writes the TrainResult and the metrics still queued, as JSON
    num_threads: int = 0  # torch threads per process; 0 keeps torchrun's (OMP_NUM_THREADS=1 per process)


def launch(nproc: int, spec: TorchrunSpec, spec_path: Path, metrics_logger: TrainingMetricsLogger) -> TrainResult:
    """Run `torchrun --standalone --nproc-per-node nproc` on `spec` (saved to `spec_path`) and return rank 0's
    TrainResult; the metrics rank 0 could not log join `metrics_logger`'s queue. Raises TorchrunError when any
    process fails."""
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)), encoding="utf-8")
    # torch.distributed.run is what the `torchrun` script runs; through this interpreter it needs no PATH entry.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", __name__, str(spec_path)]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise TorchrunError(f"torchrun with {nproc} processes exited with {completed.returncode}: {' '.join(command)}")
    data = json.loads(Path(spec.result).read_text(encoding="utf-8"))
    metrics_logger.pending.extend(Metric(*values) for values in data.pop("unlogged_metrics"))
    for key in ("checkpoint_path", "last_checkpoint_path"):
        data[key] = Path(data[key]) if data[key] else None
    return TrainResult(**data)


def main(argv: list[str] | None = None) -> int:
    """One process of the torchrun launch (argv: the spec's path)."""
    import torch

    from neuroq.shards import PackedBlocks
    from neuroq.tokenizer import NeuroQTokenizer
    from neuroq.train import train

    [spec_path] = sys.argv[1:] if argv is None else argv
    spec = TorchrunSpec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    config = TrainConfig(**spec.config)
    metrics_logger = TrainingMetricsLogger(spec.tracking_uri, spec.run_id)  # called on rank 0 only
    result = train(config, PackedBlocks(spec.train_tokens, config.block_size),
                   PackedBlocks(spec.val_tokens, config.block_size), NeuroQTokenizer.load(spec.tokenizer),
                   callbacks=[metrics_logger])
    if result.checkpoint_path is not None:  # only rank 0 exports
        unlogged = [[m.key, m.value, m.timestamp, m.step] for m in metrics_logger.pending]
        data = {**dataclasses.asdict(result), "unlogged_metrics": unlogged}
        Path(spec.result).write_text(json.dumps(data, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
