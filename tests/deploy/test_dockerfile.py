"""`python -m serving.docker`: MLflow's Dockerfile for each served model, with the torch build of its variant.

No Docker engine runs here, so the tests read what an engine would build: the Dockerfile, the build context,
and the image's Python environment, rebuilt as a folder holding only the distributions the image installs
(tests/deploy/image_env.py), in which each model must load and answer a request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests
import torch
import yaml
from mlflow.models import Model

from neuroq.errors import ConfigError
from serving.docker import (
    CONTEXT_MODEL_DIR,
    CPU_TORCH_INDEX,
    SERVED_PORT,
    VARIANTS,
    DockerfileConfig,
    generate_dockerfile,
    main,
)
from serving.generation.log import default_requirements
from serving.ruri import register as ruri_registry
from tests.deploy.image_env import image_site
from tests.support.mlflow_server import free_port, stop_process_group
from tests.serving.tiny_models import HIDDEN

TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"
SERVE_ENTRYPOINT = ["python", "-c", "from mlflow.models import container as C; C._serve('local')"]
INSTALL_DEPS = ("RUN python -c \"from mlflow.models import container as C; "
                "C._install_pyfunc_deps('/opt/ml/model', install_mlflow=False, env_manager='local');\"")


@dataclass(frozen=True)
class Served:
    uri: str
    tracking_uri: str
    requirements: list[str]
    code_files: tuple[str, ...]  # files the pyfunc imports, relative to the repository and to the context's code/
    artifacts: dict[str, Path]  # context path under the model -> the file it was registered from
    request: dict


@pytest.fixture(scope="module")
def served(registry, checkpoint_dir, store, registered_embed, registered_rerank, tiny_bi_encoder_dir,
           tiny_cross_encoder_dir) -> dict[str, Served]:
    ruri = ("serving/base/model.py", "serving/base/encoder.py")
    return {
        "neuroq": Served(
            f"models:/{registry.name}@champion", registry.tracking_uri, default_requirements(),
            ("serving/generation/model.py", "serving/base/model.py", "neuroq/model.py", "neuroq/generate.py"),
            {f"artifacts/{name}": checkpoint_dir / name for name in
             ("model.safetensors", "config.json", "tokenizer.model")},
            {"prompt": "こんにちは", "max_tokens": 4, "seed": 0},
        ),
        "ruri-embed": Served(
            f"models:/{registered_embed.name}@champion", store.tracking_uri, ruri_registry.pip_requirements(),
            ("serving/embeddings/model.py", *ruri),
            {"artifacts/model/model.safetensors": tiny_bi_encoder_dir / "model.safetensors"},
            {"input": ["東京は日本の首都です。", "猫はかわいい"]},
        ),
        "ruri-rerank": Served(
            f"models:/{registered_rerank.name}@champion", store.tracking_uri, ruri_registry.pip_requirements(),
            ("serving/rerank/model.py", *ruri),
            {"artifacts/model/model.safetensors": tiny_cross_encoder_dir / "model.safetensors"},
            {"query": "東京", "documents": ["東京は日本の首都です。", "猫はかわいい"]},
        ),
    }


@contextlib.contextmanager
def tracking(uri: str):
    """The models live in two stores; set_tracking_uri also exports MLFLOW_TRACKING_URI, so put it back."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="module")
def contexts(served, tmp_path_factory):
    root = tmp_path_factory.mktemp("docker")
    built = {}
    for name, model in served.items():
        with tracking(model.tracking_uri):
            for variant in VARIANTS:
                built[name, variant] = generate_dockerfile(
                    DockerfileConfig(model.uri, str(root / f"{name}-{variant}"), variant=variant)
                )
    return built


def instructions(dockerfile: Path) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments and blank lines dropped."""
    joined = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def torch_step(steps: list[str]) -> str:
    [step] = [s for s in steps if s.startswith("RUN pip install") and "torch==" in s]
    return step


@pytest.mark.parametrize("name", ["neuroq", "ruri-embed", "ruri-rerank"])
def test_cpu_image_installs_cpu_torch_before_the_model_and_serves_it_with_mlflow(name, served, contexts):
    context = contexts[name, "cpu"]
    steps = instructions(context.dockerfile)
    python = yaml.safe_load((context.model_dir / "python_env.yaml").read_text())["python"]

    # The Python the model was logged with, so its cloudpickle / code load as they did here.
    assert python == platform.python_version()
    assert steps[0] == f"FROM python:{python}-slim"
    assert f"RUN pip install mlflow=={mlflow.__version__}" in steps
    # PyPI's torch of the pinned release is the CUDA build: the CPU wheel goes in first and meets the pin.
    assert context.torch_requirement == TORCH_PIN
    assert torch_step(steps) == f'RUN pip install --no-cache-dir --index-url {CPU_TORCH_INDEX} "{TORCH_PIN}"'
    model_copy = steps.index(f"COPY {CONTEXT_MODEL_DIR} /opt/ml/model")
    assert steps.index(torch_step(steps)) < model_copy < steps.index(INSTALL_DEPS)
    assert "ENV MLFLOW_MODELS_WORKERS=1" in steps
    assert "ENV MLFLOW_DISABLE_ENV_CREATION=True" in steps  # nothing is installed when the container starts
    [entrypoint] = [s for s in steps if s.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == SERVE_ENTRYPOINT
    assert not any("NVIDIA" in s for s in steps)


@pytest.mark.parametrize("name", ["neuroq", "ruri-embed", "ruri-rerank"])
def test_cuda_image_differs_only_by_the_cuda_torch_build_and_the_gpu_variables(name, contexts):
    cpu, cuda = (instructions(contexts[name, variant].dockerfile) for variant in VARIANTS)

    assert [s for s in cuda if s not in cpu] == [
        "ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        f'RUN pip install --no-cache-dir "{TORCH_PIN}"',  # PyPI's build of this release, with CUDA
    ]
    assert [s for s in cpu if s not in cuda] == [torch_step(cpu)]


@pytest.mark.parametrize("name", ["neuroq", "ruri-embed", "ruri-rerank"])
def test_build_context_holds_the_models_mlmodel_code_artifacts_and_requirements(name, served, contexts):
    model, context = served[name], contexts[name, "cpu"]
    flavor = Model.load(str(context.model_dir / "MLmodel")).flavors["python_function"]
    repo = Path(__file__).resolve().parents[2]

    assert context.model_dir == context.directory / CONTEXT_MODEL_DIR
    assert flavor["code"] == "code"
    for file in model.code_files:
        assert (context.model_dir / "code" / file).read_bytes() == (repo / file).read_bytes(), file
    for declared in flavor["artifacts"].values():
        assert (context.model_dir / declared["path"]).exists(), declared
    for inside, source in model.artifacts.items():
        assert _sha256(context.model_dir / inside) == _sha256(source), inside
    assert (context.model_dir / "requirements.txt").read_text().split() == model.requirements
    assert yaml.safe_load((context.model_dir / "python_env.yaml").read_text())["dependencies"] == [
        "-r requirements.txt"
    ]


def test_a_context_is_never_written_over_another(contexts, served):
    used = contexts["ruri-embed", "cpu"].directory
    with tracking(served["ruri-embed"].tracking_uri), pytest.raises(ConfigError, match="not empty"):
        generate_dockerfile(DockerfileConfig(served["ruri-embed"].uri, str(used)))
    with pytest.raises(ConfigError, match="variant"):
        DockerfileConfig(served["ruri-embed"].uri, str(used), variant="rocm")


def test_command_line_writes_the_cuda_context(served, tmp_path, capsys):
    out = tmp_path / "rerank-cuda"
    with tracking(served["ruri-rerank"].tracking_uri):
        assert main(["-m", served["ruri-rerank"].uri, "-d", str(out), "--variant", "cuda", "--workers", "2"]) == 0
    steps = instructions(out / "Dockerfile")
    assert capsys.readouterr().out.strip() == str(out / "Dockerfile")
    assert "ENV MLFLOW_MODELS_WORKERS=2" in steps
    assert torch_step(steps) == f'RUN pip install --no-cache-dir "{TORCH_PIN}"'


def test_openai_image_runs_the_front_from_the_code_the_model_carries(served, tmp_path):
    """`--openai embed --workers 2`: the entrypoint is the OpenAI front over /opt/ml/model, named as registered, in
    two uvicorn workers; run here as the image would (the model's own code/ first on the path, not this checkout),
    both workers load the model and it answers the OpenAI SDK's body."""
    model = served["ruri-embed"]
    with tracking(model.tracking_uri):
        context = generate_dockerfile(DockerfileConfig(model.uri, str(tmp_path / "openai"), openai="embed",
                                                       workers=2))
    steps = instructions(context.dockerfile)
    [entrypoint] = [json.loads(s.removeprefix("ENTRYPOINT ")) for s in steps if s.startswith("ENTRYPOINT ")]
    assert entrypoint == ["python", "-m", "serving", "openai", "--embed", "ruri-embed=/opt/ml/model",
                          "--host", "0.0.0.0", "-p", str(SERVED_PORT), "--workers", "2"]
    assert "ENV PYTHONPATH=/opt/ml/model/code" in steps
    assert not any("MLFLOW_MODELS_WORKERS" in s for s in steps)
    assert (context.model_dir / "code" / "serving" / "openai" / "app.py").is_file()

    port = free_port()
    command = [sys.executable, *entrypoint[1:5], f"ruri-embed={context.model_dir}", "--host", "127.0.0.1",
               "-p", str(port), *entrypoint[-2:]]
    env = {**os.environ, "PYTHONPATH": str(context.model_dir / "code"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "front.log", "wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "front.log").read_text()
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        answer = requests.post(f"{url}/v1/embeddings", json={"model": "ruri-embed", "input": ["東京", "猫"]},
                               timeout=60).json()
        assert [len(item["embedding"]) for item in answer["data"]] == [HIDDEN, HIDDEN]
        served_from = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["uri"]) for m in served_from] == [("ruri-embed", str(context.model_dir))]
        # /health answers once one worker has loaded; the other may still be loading
        while (tmp_path / "front.log").read_text().count(") loaded in ") < 2:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "front.log").read_text()
            time.sleep(0.3)
    finally:
        stop_process_group(process)


# ------------------------------------------------------------------------------------ the image's Python


@pytest.fixture(scope="module")
def answers(served, contexts, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each model loaded with `python -S` from a folder holding only what its image installs; all three load
    at once (each spends its time importing torch and MLflow)."""
    root = tmp_path_factory.mktemp("image-env")
    sites: dict[str, Path] = {}
    running = {}
    for name, model in served.items():
        model_dir = contexts[name, "cpu"].model_dir
        requirements = (model_dir / "requirements.txt").read_text()
        if requirements not in sites:
            sites[requirements] = image_site(model_dir, root / f"site-{len(sites)}")
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(sites[requirements]), "HOME": str(root),
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NEUROQ_SERVING_SESSION_DIR": str(root / name)}
        running[name] = subprocess.Popen(
            [sys.executable, "-S", str(Path(__file__).with_name("image_env.py")), str(model_dir),
             json.dumps(model.request)],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", ["neuroq", "ruri-embed", "ruri-rerank"])
def test_the_image_environment_loads_the_model_and_answers(name, answers):
    result = answers[name]
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if name == "neuroq":
        assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] <= 4
    elif name == "ruri-embed":
        assert [len(item["embedding"]) for item in answer["data"]] == [HIDDEN, HIDDEN]
    else:
        assert sorted(item["index"] for item in answer["results"]) == [0, 1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
