"""deploy/k8s: the manifests validate, refer to each other consistently, set limits the models read, and the
tracking server's settings work on a real `mlflow server` with its artifacts in S3 (SeaweedFS).

Kubernetes resources validate strictly against Kubernetes' own schemas (kubernetes-validate). KServe's CRD is not
in the repository: an InferenceService validates against tests/deploy/inferenceservice.schema.json, written here
from KServe's documented v1beta1 API for the fields we use, and its pod fields against Kubernetes' PodSpec.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import mlflow
import pytest
import requests
import yaml

from components.component import DEFAULT_IMAGE
from serving.base.settings import ENV_PREFIX, BatchConfig, Limits, pick_device
from serving.generation.settings import GenerationSettings
from tests.support.mlflow_server import mlflow_server
from tests.support.s3server import SeaweedS3

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
FOLDERS = ("serving", "serving-openai", "mlflow", "pipeline")
# The pipeline's claim goes into the namespace KFP runs pods in, which exists already.
OWN_NAMESPACE = ("serving", "mlflow")
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
ISVC_SCHEMA = json.loads(Path(__file__).with_name("inferenceservice.schema.json").read_text())
# PredictorSpec inlines a PodSpec: these are the pod fields our InferenceServices use.
POD_FIELDS = ("containers", "tolerations", "volumes", "nodeSelector", "serviceAccountName")
SERVED_PORT = 8080


def load(folder: str) -> list[dict]:
    kustomization = yaml.safe_load((K8S / folder / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((K8S / folder / resource).read_text()) if doc]
    return docs


RESOURCES = {folder: load(folder) for folder in FOLDERS}
ALL = [doc for docs in RESOURCES.values() for doc in docs]


def of_kind(kind: str, docs: list[dict] = ALL) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_specs(docs: list[dict] = ALL) -> Iterator[tuple[dict, dict]]:
    """(resource, pod spec) for every workload, an InferenceService's predictor included."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "InferenceService":
            yield doc, doc["spec"]["predictor"]


def containers(docs: list[dict] = ALL) -> Iterator[tuple[dict, dict]]:
    for doc, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield doc, container


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def container_ports(container: dict) -> set:
    return {p["containerPort"] for p in container.get("ports", [])} | {
        p["name"] for p in container.get("ports", []) if "name" in p
    }


# ------------------------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_kustomization_lists_every_manifest_of_its_folder_and_sets_a_namespace(folder):
    kustomization = yaml.safe_load((K8S / folder / "kustomization.yaml").read_text())
    files = {path.name for path in (K8S / folder).glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"]
    if folder in OWN_NAMESPACE:
        [namespace] = of_kind("Namespace", RESOURCES[folder])
        assert namespace["metadata"]["name"] == kustomization["namespace"]
    else:
        assert of_kind("Namespace", RESOURCES[folder]) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_resources_validate_strictly(version):
    core = [doc for doc in ALL if doc["kind"] != "InferenceService"]
    assert {doc["kind"] for doc in core} == {"Namespace", "Secret", "Service", "StatefulSet", "Deployment",
                                             "PersistentVolumeClaim"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_inference_services_validate_against_kserves_api_and_their_pods_against_podspec(version):
    services = of_kind("InferenceService")
    assert {isvc["metadata"]["name"] for isvc in services} == {"neuroq-generation", "ruri-embed", "ruri-rerank",
                                                               "neuroq-openai"}
    for isvc in services:
        jsonschema.validate(isvc, ISVC_SCHEMA)
        predictor = isvc["spec"]["predictor"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]},
               "spec": {key: predictor[key] for key in POD_FIELDS if key in predictor}}
        kubernetes_validate.validate(pod, version, strict=True)


def test_the_inference_service_schema_refuses_unknown_or_misspelt_fields():
    isvc = of_kind("InferenceService")[0]
    misspelt = {**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "minReplica": 1}}}
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        jsonschema.validate(misspelt, ISVC_SCHEMA)
    with pytest.raises(jsonschema.ValidationError, match="Knative"):
        bad_mode = {**isvc, "metadata": {**isvc["metadata"],
                                         "annotations": {"serving.kserve.io/deploymentMode": "Knative"}}}
        jsonschema.validate(bad_mode, ISVC_SCHEMA)


# ------------------------------------------------------------------------------------------ cross-references


def test_services_select_exactly_their_pods_and_target_ports_those_pods_open():
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [(doc, spec) for doc, spec in pod_specs()
                   if doc["kind"] != "InferenceService"
                   and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, service["metadata"]["name"]
        workload, spec = matched[0]
        assert workload["spec"]["selector"]["matchLabels"] == selector
        opened = set().union(*(container_ports(c) for c in spec["containers"]))
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in opened, (service["metadata"]["name"], port)
    for statefulset in of_kind("StatefulSet"):
        [governing] = [s for s in of_kind("Service") if s["metadata"]["name"] == statefulset["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None"


def test_every_secret_reference_names_a_key_of_a_secret_in_the_same_kustomization():
    references = 0
    for folder, docs in RESOURCES.items():
        keys = {(s["metadata"]["name"], key) for s in of_kind("Secret", docs) for key in s.get("stringData", {})}
        for _, container in containers(docs):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    references += 1
                    assert (ref["name"], ref["key"]) in keys, (folder, container["name"], ref)
    assert references >= 7


def test_env_values_refer_only_to_variables_defined_before_them():
    for _, container in containers():
        defined: set[str] = set()
        for item in container.get("env", []):
            for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")):
                assert name in defined, (container["name"], item["name"], name)
            defined.add(item["name"])


def test_probes_and_init_commands_use_what_the_containers_define():
    for doc, container in containers():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http:
                assert http["port"] in container_ports(container), (doc["metadata"]["name"], probe)
        for word in shlex.split(" ".join(container.get("command", []))):
            for name in re.findall(r"\$([A-Z_][A-Z0-9_]*)", word):
                assert name in {item["name"] for item in container.get("env", [])}, (container["name"], name)


def test_predictors_expose_mlflows_port_and_probe_a_path_its_nginx_passes():
    """The image's nginx (MLflow's container config) listens on 8080 and forwards only /ping and /invocations;
    /health, which `mlflow models serve` answers, is a 404 inside the image."""
    nginx = (Path(mlflow.__file__).parent / "models" / "container" / "scoring_server" / "nginx.conf").read_text()
    assert re.search(rf"listen {SERVED_PORT}\b", nginx)
    [passed] = re.findall(r"location ~ (\S+) \{", nginx)
    for isvc in of_kind("InferenceService", RESOURCES["serving"]):
        [container] = isvc["spec"]["predictor"]["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [SERVED_PORT]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == SERVED_PORT
            assert re.match(passed, container[probe]["httpGet"]["path"])
        assert re.match(passed, "/invocations") and not re.match(passed, "/health")


def test_the_openai_front_runs_the_documented_command_from_the_project_image(monkeypatch):
    """deploy/k8s/serving-openai: `python -m serving openai` over the three champions, from the image
    deploy/pipeline/Dockerfile builds (docs/deploy.md), listening on the probed port, its variables all read."""
    from serving.__main__ import build_parser
    from serving.openai.config import FrontConfig

    [isvc] = of_kind("InferenceService", RESOURCES["serving-openai"])
    [container] = isvc["spec"]["predictor"]["containers"]
    assert container["image"] == DEFAULT_IMAGE
    args = vars(build_parser().parse_args(container["command"][3:] + container["args"]))
    assert args == {"tracking_uri": None, "command": "openai", "generate": "models:/neuroq@champion",
                    "embed": "models:/ruri-embed@champion", "rerank": "models:/ruri-rerank@champion",
                    "host": "0.0.0.0", "port": SERVED_PORT, "workers": 1}
    assert container["command"][:3] == ["python", "-m", "serving"]
    assert [p["containerPort"] for p in container["ports"]] == [SERVED_PORT]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": SERVED_PORT}

    env = env_of(container)
    environ = RecordingEnviron(env)
    monkeypatch.setattr(os, "environ", environ)
    front = FrontConfig.from_env()
    Limits.from_env(), BatchConfig.from_env(), GenerationSettings.from_env(), pick_device()
    assert {key for key in env if key.startswith(ENV_PREFIX)} <= environ.read
    assert front.max_body_bytes == int(env["NEUROQ_SERVING_MAX_BODY_BYTES"])
    assert [item["valueFrom"]["secretKeyRef"] for item in container["env"] if item["name"] == "NEUROQ_SERVING_API_KEY"]
    [tracking] = [s for s in of_kind("Service", RESOURCES["mlflow"]) if s["metadata"]["name"] == "mlflow"]
    mlflow_namespace = yaml.safe_load((K8S / "mlflow" / "kustomization.yaml").read_text())["namespace"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow.{mlflow_namespace}.svc:{tracking['spec']['ports'][0]['port']}"


class RecordingEnviron(dict):
    """os.environ stand-in that remembers which variables were read."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", ["neuroq-generation", "ruri-embed", "ruri-rerank"])
def test_serving_variables_are_ones_the_model_reads_and_their_values_parse(name, monkeypatch):
    [isvc] = [i for i in of_kind("InferenceService") if i["metadata"]["name"] == name]
    [container] = isvc["spec"]["predictor"]["containers"]
    env = env_of(container)
    environ = RecordingEnviron(env)
    monkeypatch.setattr(os, "environ", environ)

    limits, batching, device = Limits.from_env(), BatchConfig.from_env(), pick_device()
    if name == "neuroq-generation":
        settings = GenerationSettings.from_env()
        assert str(settings.session_dir) == env["NEUROQ_SERVING_SESSION_DIR"]
        [mount] = container["volumeMounts"]
        assert mount["mountPath"] == env["NEUROQ_SERVING_SESSION_DIR"]
    assert {key for key in env if key.startswith(ENV_PREFIX)} <= environ.read
    assert limits.max_chars == int(env["NEUROQ_SERVING_MAX_CHARS"])
    assert batching.batch_size == int(env["NEUROQ_SERVING_BATCH_SIZE"])
    gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert device == ("cuda" if gpus else "cpu")
    assert container["image"].endswith("-cuda" if gpus else "-cpu")
    # Each worker holds a model: one GPU per worker, and workers x torch threads within the CPU limit.
    workers = int(env["MLFLOW_MODELS_WORKERS"])
    assert gpus in (0, workers)
    assert workers * int(env["OMP_NUM_THREADS"]) <= int(container["resources"]["limits"]["cpu"])


def docker_builds(text: str) -> dict[str, tuple[str, str]]:
    """image -> (build context, Dockerfile) of every `docker build` command in a document."""
    builds = {}
    for line in re.findall(r"docker build .*", text.replace("\\\n", " ")):
        args = shlex.split(line.replace("$(git rev-parse HEAD)", "SHA"))
        context = args[-1]
        dockerfile = args[args.index("-f") + 1] if "-f" in args else f"{context}/Dockerfile"
        builds[args[args.index("-t") + 1]] = (context, dockerfile)
    return builds


def test_images_are_the_ones_docs_deploy_md_builds():
    docs = (REPO / "docs" / "deploy.md").read_text()
    builds = docker_builds(docs)
    variants = {}
    for line in re.findall(r"python -m serving\.docker .*", docs):
        args = shlex.split(line.split("#")[0])
        variants[args[args.index("-d") + 1]] = args[args.index("--variant") + 1] if "--variant" in args else "cpu"
    for isvc in of_kind("InferenceService", RESOURCES["serving"]):
        [container] = isvc["spec"]["predictor"]["containers"]
        context, _ = builds[container["image"]]
        assert container["image"].endswith(f"-{variants[context]}"), (container["image"], context)
    [server] = [c for _, c in containers() if c["name"] == "mlflow"]
    assert builds[server["image"]] == ("deploy/mlflow-server", "deploy/mlflow-server/Dockerfile")
    dockerfile = (REPO / "deploy" / "mlflow-server" / "Dockerfile").read_text()
    assert f"mlflow=={mlflow.__version__}" in dockerfile
    assert server["image"].endswith(f":{mlflow.__version__}")
    # SQLAlchemy 2.x opens postgresql:// URIs with psycopg (3), not psycopg2; S3 goes through boto3.
    assert re.search(r'"psycopg\[binary\]==\S+"', dockerfile) and re.search(r"boto3==\S+", dockerfile)
    # The pipeline's default image is the one deploy/pipeline/Dockerfile builds from the repository root.
    assert builds[DEFAULT_IMAGE] == (".", "deploy/pipeline/Dockerfile")


# ------------------------------------------------------------------------------------ the tracking server


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` with the manifest's settings (its MLFLOW_* variables) except the database: sqlite here
    instead of PostgreSQL, and its artifacts destination in a SeaweedFS bucket of the manifest's name."""
    [server] = [c for _, c in containers() if c["name"] == "mlflow"]
    env = env_of(server)
    destination = env["MLFLOW_ARTIFACTS_DESTINATION"]
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    settings = {k: v for k, v in env.items() if k.startswith("MLFLOW_SERVE") or k == "MLFLOW_SERVER_ALLOWED_HOSTS"}
    with SeaweedS3(buckets=(bucket,)) as s3:
        with mlflow_server(tmp_path_factory.mktemp("tracking"), artifacts_destination=destination,
                           env={**settings, **s3.env()}, startup_timeout=180) as running:
            yield running, s3, bucket, prefix


@pytest.mark.slow
@pytest.mark.parametrize("host", ["mlflow:5000", "mlflow.mlflow:5000", "mlflow.mlflow.svc:5000",
                                  "mlflow.mlflow.svc.cluster.local:5000", "localhost:5000"])
def test_tracking_server_answers_clients_that_use_the_service_name(tracking_server, host):
    server, *_ = tracking_server
    response = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            headers={"Host": host}, timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_tracking_server_refuses_other_hosts_and_proxies_artifacts_to_the_bucket(tracking_server):
    server, s3, bucket, prefix = tracking_server
    refused = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                           headers={"Host": "attacker.example.com"}, timeout=30)
    assert refused.status_code == 403

    body = "ニューロQ".encode()
    stored = requests.put(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/deploy-check/hello.txt", data=body,
                          headers={"Host": "mlflow.mlflow.svc:5000"}, timeout=30)
    assert stored.status_code == 200, stored.text
    obj = s3.client().get_object(Bucket=bucket, Key=f"{prefix}/deploy-check/hello.txt")
    assert obj["Body"].read() == body
