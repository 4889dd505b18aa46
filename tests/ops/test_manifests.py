"""The Kubernetes manifests users copy (jobs/kubernetes/): KubeRay RayJob and RayCronJob.

Validated against KubeRay's CRD schemas when a copy is at hand (PIPELINE_KUBERAY_CRDS, or
shared/schemas/kuberay beside the checkout: the `ray.io_rayjobs.yaml` and
`ray.io_raycronjobs.yaml` of ray-project/kuberay, ray-operator/config/crd/bases/), strictly
(unknown fields fail, as with kubectl's strict field validation). Always: their pod templates
against Kubernetes' own schema (kubernetes-validate, strict), and what they name (the job
spec, the schedule, the Ray version, the image's extras) against this project.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.config import JobSpec
from pipeline.ops.cron import check_cron

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = {"RayJob": ROOT / "jobs" / "kubernetes" / "rayjob.yaml",
             "RayCronJob": ROOT / "jobs" / "kubernetes" / "raycronjob.yaml"}
K8S_VERSION = "1.33.0"


def load(kind: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(MANIFESTS[kind].read_text()) if d]
    assert doc["kind"] == kind and doc["apiVersion"] == "ray.io/v1"
    return doc


def job_spec_of(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def crd_dir() -> Path | None:
    for d in (os.environ.get("PIPELINE_KUBERAY_CRDS"), ROOT.parent / "shared" / "schemas" / "kuberay"):
        if d and (Path(d) / "ray.io_rayjobs.yaml").is_file():
            return Path(d)
    return None


def strict(schema: dict) -> dict:
    """Unknown fields fail: every object schema with properties gets additionalProperties: false."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_valid_against_kuberays_crd(kind):
    import jsonschema

    d = crd_dir()
    if d is None:
        pytest.skip("no copy of KubeRay's CRDs (set PIPELINE_KUBERAY_CRDS); checked by the tests below only")
    crd = yaml.safe_load((d / f"ray.io_{kind.lower()}s.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    doc = load(kind)
    jsonschema.Draft7Validator(schema).validate(doc)
    bad = copy.deepcopy(doc)
    job_spec_of(bad)["entryPoint"] = "typo"  # the strict check can fail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_pod_templates_valid_against_kubernetes_schema(kind):
    kv = pytest.importorskip("kubernetes_validate")
    cluster = job_spec_of(load(kind))["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                        "template": group["template"]}
        kv.validate(pod_template, K8S_VERSION, strict=True)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
    workers = cluster["workerGroupSpecs"]
    assert all(w["minReplicas"] == 0 and w["maxReplicas"] >= 1 for w in workers) and cluster["enableInTreeAutoscaling"]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_what_the_manifests_name_exists_in_this_project(kind):
    import importlib.metadata

    job = job_spec_of(load(kind))
    argv = shlex.split(job["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipeline", "run"] and "--address" in argv
    in_image = argv[4]
    assert in_image.startswith("/app/"), "the image holds the project at /app (Dockerfile)"
    spec = JobSpec.from_yaml(ROOT / in_image[len("/app/"):])  # the spec file exists and is valid
    assert spec.model.path and spec.model.path.startswith("/mnt/models/")
    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray")
    mounts = [m["mountPath"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
    assert mounts and all(spec.model.path.startswith(m + "/") for m in mounts)  # every pod sees the model
    if kind == "RayCronJob":
        doc = load(kind)
        assert check_cron(doc["spec"]["schedule"]) and "--incremental" in argv
        assert job["activeDeadlineSeconds"] < 24 * 3600  # no overlap with the next daily run


def test_dockerfile_builds_on_the_ray_pin_with_the_gpu_extra():
    import importlib.metadata
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-", text, re.M)
    assert base and base.group(1) == importlib.metadata.version("ray")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.search(r'pip install .*"/app\[(\w+)\]"', text)
    assert installed and installed.group(1) == "gpu" and "gpu" in extras
