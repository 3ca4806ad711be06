"""Container images for the served models: MLflow's own Dockerfile, with the torch build chosen for CPU or CUDA.

    python -m serving.docker -m models:/neuroq@champion -d build/neuroq-cpu
    python -m serving.docker -m models:/neuroq@champion -d build/neuroq-cuda --variant cuda
    python -m serving.docker -m models:/ruri-embed@champion -d build/ruri-embed-openai --openai embed
    docker build -t REGISTRY/neuroq-generation:TAG-cpu build/neuroq-cpu

What `mlflow models generate-dockerfile -m URI -d DIR --env-manager local` writes (MLflow 3.17), kept as is:
the model is downloaded into DIR/model_dir (MLmodel, `code/` with the `neuroq` / `serving` code_paths,
`artifacts/`, requirements.txt, python_env.yaml) and copied to /opt/ml/model; the base image is
`python:<the model's Python>-slim` (the Python it was logged with, so its code loads as it did then), nginx is
installed, then `pip install mlflow==<this MLflow>`, then the model's requirements.txt; the entrypoint runs
nginx on :8080 in front of uvicorn (:8000) with `MLFLOW_MODELS_WORKERS` workers, and nginx passes only
`/ping` and `/invocations` (bodies up to 100 MB). `--env-manager virtualenv|conda` switch to ubuntu:24.04 with
pyenv (cloned from GitHub at build time) or Miniconda plus a JDK: slower, larger, and nothing our models need.

What it gets wrong for us: requirements.txt pins `torch==2.13.0` without a local label (so every host can pick its
build), and for Linux x86_64 PyPI's torch of that name is the CUDA 13 build, which drags several GB of
`nvidia-*` wheels into a CPU image. So a torch layer goes in before the model is copied: the CPU build from
PyTorch's CPU index, or the CUDA build (PyPI's own, or the index named by `torch_index_url`, e.g. .../cu126 for
older drivers). The model's `torch==X` is then already met (PEP 440 ignores the `+cpu` label when the pin has
none) and pip leaves it alone; and the large layer stays cached when only the model changes. No CUDA base image
is needed: the CUDA runtime, cuDNN and NCCL come as the torch wheel's `nvidia-*` dependencies, and the node
supplies only the driver (through the NVIDIA container toolkit / device plugin). A `nvidia/cuda` base would also
bring another Python than the one the model was logged with.

`--openai TASK` makes the image run the OpenAI-compatible front instead (`python -m serving openai --TASK
NAME=/opt/ml/model --workers N` on :8080, from the `serving` package the model carries in `code/`): the model's
registered name is its id, `/health` its probe, and nginx, which passes only `/ping` and `/invocations`, is not in
the path. `--workers` sets the workers of either server.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from neuroq.errors import ConfigError
from serving.base.served import resolve_served_model
from serving.openai.config import TASKS

__all__ = [
    "CONTEXT_MODEL_DIR",
    "CPU_TORCH_INDEX",
    "DockerContext",
    "DockerfileConfig",
    "SERVED_PORT",
    "VARIANTS",
    "generate_dockerfile",
    "main",
]

logger = logging.getLogger(__name__)

VARIANTS = ("cpu", "cuda")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Where MLflow puts the model inside the build context (mlflow.pyfunc.backend._MODEL_DIR_NAME).
CONTEXT_MODEL_DIR = "model_dir"
# The marker of MLflow's model-install step in its Dockerfile template; the torch layer goes right before it.
_MODEL_STEP = "# Copy model to image and install dependencies"
# Where MLflow's image serves (its nginx; the OpenAI front listens there instead).
SERVED_PORT = 8080
_MODEL_PATH = "/opt/ml/model"


@dataclass(frozen=True)
class DockerfileConfig:
    model_uri: str  # models:/name@alias, models:/name/version, runs:/..., or a local model folder
    output_dir: str
    variant: str = "cpu"  # one of VARIANTS
    # "" = the variant's default: CPU_TORCH_INDEX for cpu, PyPI (CUDA 13 build of torch 2.13) for cuda.
    torch_index_url: str = ""
    # uvicorn workers per container, of MLflow's scoring server or of the OpenAI front (its --workers); scale out
    # with replicas (each worker holds its own copy of the model, and MLflow's default, one per CPU of the node
    # rather than of the container's limit, overcommits a pod).
    workers: int = 1
    # "generate" | "embed" | "rerank": the image runs the OpenAI front serving the model as that task; "" = MLflow's
    # scoring server.
    openai: str = ""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.openai not in ("", *TASKS):
            raise ConfigError(f"openai must be one of {', '.join(TASKS)}, got {self.openai!r}")

    @property
    def index_url(self) -> str:
        return self.torch_index_url or (CPU_TORCH_INDEX if self.variant == "cpu" else "")


@dataclass(frozen=True)
class DockerContext:
    """A build context: `docker build -t IMAGE <directory>`."""

    directory: Path
    dockerfile: Path
    model_dir: Path  # the model as copied to /opt/ml/model
    torch_requirement: str | None  # the model's torch pin, e.g. "torch==2.13.0"; None if it needs no torch


def generate_dockerfile(config: DockerfileConfig) -> DockerContext:
    """Write MLflow's Dockerfile and build context for `config.model_uri` with the torch layer of the variant."""
    from mlflow.models.flavor_backend_registry import get_flavor_backend

    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: a build context must hold one model only; choose a new folder")
    # Same call as `mlflow models generate-dockerfile --env-manager local`; install_java=False since no flavor
    # of ours runs on the JVM (the CLI's default leaves that to MLflow).
    backend = get_flavor_backend(config.model_uri, docker_build=True, env_manager="local")
    backend.generate_dockerfile(config.model_uri, str(out), install_java=False, install_mlflow=False)
    model_dir = out / CONTEXT_MODEL_DIR
    torch = _torch_requirement(model_dir / "requirements.txt")
    dockerfile = out / "Dockerfile"
    text = dockerfile.read_text(encoding="utf-8")
    if _MODEL_STEP not in text:
        raise RuntimeError(
            f"MLflow's Dockerfile has no {_MODEL_STEP!r} step any more: the torch layer cannot be placed; "
            "check serving/docker.py against this MLflow version"
        )
    text = text.replace(_MODEL_STEP, _runtime_layer(config, torch) + _MODEL_STEP, 1)
    if config.openai:
        text = _front_entrypoint(text, config)
    dockerfile.write_text(text, encoding="utf-8")
    logger.info("wrote %s (%s, %s) for %s", dockerfile, config.variant, torch or "no torch", config.model_uri)
    return DockerContext(out, dockerfile, model_dir, torch)


def _torch_requirement(requirements: Path) -> str | None:
    for line in requirements.read_text(encoding="utf-8").splitlines():
        try:
            requirement = Requirement(line.split("#", 1)[0].strip())
        except InvalidRequirement:
            continue  # blank lines and pip options (-r, --index-url)
        if requirement.name.lower() == "torch":
            return str(requirement)
    return None


def _runtime_layer(config: DockerfileConfig, torch: str | None) -> str:
    lines = [] if config.openai else [
        "# Serving knobs: workers per container (scale out with replicas).",
        f"ENV MLFLOW_MODELS_WORKERS={config.workers}",
    ]
    if config.variant == "cuda":
        # What nvidia/cuda images set: lets `docker run --gpus` and the container toolkit expose the driver.
        lines.append("ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility")
    if torch is not None:
        index = f" --index-url {config.index_url}" if config.index_url else ""
        build = "CPU build" if config.variant == "cpu" else "CUDA build (the CUDA runtime comes as nvidia-* wheels)"
        lines += [
            f"# torch, {build}, before the model: its requirement {torch} is then already met.",
            f'RUN pip install --no-cache-dir{index} "{torch}"',
        ]
    return "\n".join(lines) + "\n\n"


def _front_entrypoint(text: str, config: DockerfileConfig) -> str:
    """MLflow's ENTRYPOINT (nginx + its scoring server) replaced by the OpenAI front over the same model."""
    entrypoints = [line for line in text.splitlines() if line.startswith("ENTRYPOINT ")]
    if len(entrypoints) != 1:
        raise RuntimeError(f"MLflow's Dockerfile has {len(entrypoints)} ENTRYPOINT lines, not one: the OpenAI "
                           "front cannot replace it; check serving/docker.py against this MLflow version")
    name = resolve_served_model(config.model_uri, Path(config.model_uri).name).name
    command = ["python", "-m", "serving", "openai", f"--{config.openai}", f"{name}={_MODEL_PATH}",
               "--host", "0.0.0.0", "-p", str(SERVED_PORT), "--workers", str(config.workers)]
    front = "\n".join([
        "# The OpenAI-compatible front (python -m serving openai) from the serving code the model carries; clients",
        f"# call /v1/... on :{SERVED_PORT} and probes GET /health. Set NEUROQ_SERVING_API_KEY to require a key.",
        f"ENV PYTHONPATH={_MODEL_PATH}/code",
        f"ENTRYPOINT {json.dumps(command)}",
    ])
    return text.replace(entrypoints[0], front, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.docker", description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model-uri", required=True, help="e.g. models:/neuroq@champion")
    parser.add_argument("-d", "--output-dir", required=True, help="the build context to create (must be empty)")
    parser.add_argument("--variant", choices=VARIANTS, default=DockerfileConfig.variant)
    parser.add_argument("--torch-index-url", default=DockerfileConfig.torch_index_url,
                        help=f"pip index for torch (default: {CPU_TORCH_INDEX} for cpu, PyPI for cuda)")
    parser.add_argument("--workers", type=int, default=DockerfileConfig.workers,
                        help="uvicorn workers per container (MLflow's server or the front); each loads the model")
    parser.add_argument("--openai", choices=TASKS, default=DockerfileConfig.openai,
                        help="run the OpenAI-compatible front serving the model as this task, not /invocations")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        context = generate_dockerfile(DockerfileConfig(**vars(args)))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(context.dockerfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
