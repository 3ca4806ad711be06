"""deploy/k8s/katib: the Katib Experiment runs the local sweep's objective with the local sweep's search space.

Katib's CRD is not in the repository: the Experiment is checked for the fields Katib's v1beta1 API requires of
the ones used here, its trial Job and claims validate strictly against Kubernetes' own schemas, and its trial
command parses with `python -m mlflow_project.sweep trial` once Katib has substituted the trial parameters.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components.component import DEFAULT_IMAGE
from mlflow_project.sweep import build_parser
from neuroq.sweep import KNOBS
FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "katib"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # as tests/deploy/test_manifests.py
DOCS = [doc for resource in yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
        for doc in yaml.safe_load_all((FOLDER / resource).read_text()) if doc]
(EXPERIMENT,) = [doc for doc in DOCS if doc["kind"] == "Experiment"]
SPEC = EXPERIMENT["spec"]
# Katib's StdOut collector's default filter: `name=value` anywhere in a line.
KATIB_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
# Katib's names for Optuna's distributions.
KINDS = {"log": ("double", "logUniform"), "float": ("double", "uniform")}


def test_the_experiment_uses_katibs_v1beta1_fields() -> None:
    assert EXPERIMENT["apiVersion"] == "kubeflow.org/v1beta1"
    assert SPEC["objective"] == {"type": "minimize", "objectiveMetricName": "val_bits_per_char",
                                 "additionalMetricNames": ["tokens_per_s"]}
    assert SPEC["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    assert SPEC["earlyStopping"]["algorithmName"] == "medianstop"
    assert SPEC["parallelTrialCount"] <= SPEC["maxTrialCount"]
    template = SPEC["trialTemplate"]
    references = {p["reference"] for p in template["trialParameters"]}
    assert references == {p["name"] for p in SPEC["parameters"]}


def test_the_search_space_is_the_local_sweeps() -> None:
    space = {p["name"]: p for p in SPEC["parameters"]}
    assert list(space) == list(KNOBS)
    for name, (kind, spec) in KNOBS.items():
        parameter = space[name]
        if kind == "categorical":
            assert parameter["parameterType"] == "categorical"
            assert [_parsed(v, spec[0]) for v in parameter["feasibleSpace"]["list"]] == list(spec), name
        else:
            feasible = parameter["feasibleSpace"]
            assert (parameter["parameterType"], feasible["distribution"]) == KINDS[kind], name
            assert (float(feasible["min"]), float(feasible["max"])) == spec, name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_trial_job_and_the_claims_validate(version: str) -> None:
    job = SPEC["trialTemplate"]["trialSpec"]
    kubernetes_validate.validate({**job, "metadata": {"name": "trial"}}, version, strict=True)
    for doc in DOCS:
        if doc["kind"] != "Experiment":
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_trial_runs_the_sweeps_objective_from_the_project_image() -> None:
    job = SPEC["trialTemplate"]["trialSpec"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == SPEC["trialTemplate"]["primaryContainerName"]
    assert container["image"] == DEFAULT_IMAGE
    # What Katib runs once it has put a trial's values in: a valid `trial` command with exactly those settings.
    values = {"lr": "0.002", "min_lr_ratio": "0.1", "warmup_fraction": "0.05", "weight_decay": "0.01",
              "beta1": "0.9", "beta2": "0.99", "batch_size": "16", "dropout": "0.0", "grad_clip": "1.0",
              "position": "rope", "norm": "rmsnorm", "tie_embeddings": "true", "zero_init_residual": "false",
              "z_loss": "0.0001", "logit_softcap": "30.0"}
    command = " ".join(container["command"])
    for name, value in values.items():
        command = command.replace("${trialParameters.%s}" % name, value)
    assert "${" not in command
    args = command.split()
    assert args[:4] == ["python", "-m", "mlflow_project.sweep", "trial"]
    ns = build_parser().parse_args(args[3:])
    like = {name: spec[0] if kind == "categorical" else 0.0 for name, (kind, spec) in KNOBS.items()}
    assert {name: getattr(ns, name) for name in KNOBS} == {k: _parsed(v, like[k]) for k, v in values.items()}
    config = ns.config_args.build(ns)
    assert (config.n_embd, config.n_ff, config.n_head, config.n_layer, config.context) == (128, 256, 4, 4, 128)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config.out_dir in mounts and config.corpus.rsplit("/", 1)[0] in mounts


def _parsed(text: str, like: object) -> object:
    """A Katib value (always a string) as the type of the KNOBS value ``like``."""
    if isinstance(like, bool):
        return {"true": True, "false": False}[text]
    return type(like)(text)


def test_katibs_collector_reads_the_line_the_trial_prints() -> None:
    line = f"val_bits_per_char={5.123456:.6f}"  # as mlflow_project.sweep prints it
    ((name, value, *_),) = KATIB_METRIC.findall(line)
    assert name == "val_bits_per_char" and math.isclose(float(value), 5.123456)
