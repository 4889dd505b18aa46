"""What `pipeline submit` carries to a cluster: the checkout zipped as Ray zips a working_dir,
and the spec rewritten so that its paths mean the same thing in the job's working directory."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import JobSpec
from pipeline.errors import UsageError
from pipeline.ops import package
from pipeline.ops.submit import _attempt, submission_base


@pytest.fixture
def checkout(tmp_path):
    """A small project checkout: the package, an ignored folder, a .git and a .venv."""
    root = tmp_path / "proj"
    (root / "pipeline").mkdir(parents=True)
    (root / "pipeline" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("[project]\nname = 'pipeline'\n")
    (root / ".gitignore").write_text("/private/\n/out/\n")
    for d in ("data", "private", ".git", ".venv/lib", "jobs"):
        (root / d).mkdir(parents=True)
    (root / "data" / "a.jsonl").write_text(json.dumps({"id": "1", "text": "hi"}) + "\n")
    (root / "private" / "b.jsonl").write_text(json.dumps({"id": "2", "text": "no"}) + "\n")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".venv" / "lib" / "big.bin").write_bytes(b"x" * 1000)
    return root


def spec_file(path: Path, **sections) -> Path:
    base = {"input": {"paths": ["../data/a.jsonl"]}, "output": {"path": "s3://bucket/out"}, "tasks": {"sentiment": {}}}
    base.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return path


def test_relative_inputs_travel_and_resolve_inside_the_jobs_working_dir(checkout, tmp_path):
    spec = spec_file(checkout / "jobs" / "Nightly Run.yaml", model={"path": "/mnt/models/m"})
    pkg = package.build_package(spec, checkout, scratch=tmp_path / "s")
    assert pkg.spec_rel == "_submitted/nightly-run.yaml"
    assert pkg.entrypoint == "python -m pipeline run _submitted/nightly-run.yaml --address auto"
    with zipfile.ZipFile(pkg.zip_path) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "cluster-wd")  # what a node unpacks
    assert {"pipeline/__init__.py", "data/a.jsonl", "_submitted/nightly-run.yaml"} <= names
    assert not any(n.startswith((".git/", ".venv/", "private/")) for n in names)  # ignored, Ray's defaults

    on_cluster = JobSpec.from_yaml(tmp_path / "cluster-wd" / pkg.spec_rel)  # as `pipeline run` there reads it
    assert on_cluster.input.paths == [str(tmp_path / "cluster-wd" / "data" / "a.jsonl")]
    assert Path(on_cluster.input.paths[0]).is_file()
    assert on_cluster.model.path == "/mnt/models/m" and on_cluster.output.path == "s3://bucket/out"


def test_spec_outside_the_checkout_travels_too(checkout, tmp_path):
    spec = spec_file(tmp_path / "elsewhere" / "job.yaml", input={"paths": ["s3://b/in/", "/shared/corpus/*.jsonl"]},
                     output={"path": "/shared/out"})
    pkg = package.build_package(spec, checkout, scratch=tmp_path / "s")
    with zipfile.ZipFile(pkg.zip_path) as z:
        carried = yaml.safe_load(z.read(pkg.spec_rel))
    assert carried["input"]["paths"] == ["s3://b/in/", "/shared/corpus/*.jsonl"]  # same meaning everywhere
    assert pkg.output == "/shared/out"


@pytest.mark.parametrize("sections, message", [
    ({"output": {"path": "../out/run1"}}, "output.path '../out/run1' is relative"),
    ({"input": {"paths": ["../../outside.jsonl"]}}, "outside the project checkout"),
    ({"input": {"paths": ["../private/b.jsonl"]}}, "not part of the job's upload"),
    ({"input": {"paths": ["../data/missing-*.jsonl"]}}, "not part of the job's upload"),
    ({"tasks": {"translation": {}}}, "tasks.translation.target_lang"),
])
def test_what_cannot_work_on_a_cluster_is_refused_before_anything_is_sent(checkout, tmp_path, sections, message):
    spec = spec_file(checkout / "jobs" / "job.yaml", **sections)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        package.build_package(spec, checkout, scratch=tmp_path / "s")


def test_upload_over_the_limit_names_the_largest(checkout, tmp_path, monkeypatch):
    (checkout / "data" / "huge.bin").write_bytes(b"\0" * 4096 + bytes(range(256)) * 4000)
    monkeypatch.setattr(package, "upload_limit", lambda: 2000)
    with pytest.raises(UsageError, match=r"over the Jobs API's .* largest: data"):
        package.build_package(spec_file(checkout / "jobs" / "j.yaml"), checkout, scratch=tmp_path / "s")


def test_submission_id_is_the_spec_identity_plus_an_attempt(checkout, tmp_path):
    spec = spec_file(checkout / "jobs" / "job.yaml")
    a = package.build_package(spec, checkout, scratch=tmp_path / "a")
    b = package.build_package(spec, checkout, scratch=tmp_path / "b")
    assert submission_base(a) == submission_base(b)  # a doubled submit names the same job
    c = package.build_package(spec, checkout, incremental=True, scratch=tmp_path / "c")
    assert submission_base(c) != submission_base(a)  # another job
    base = submission_base(a)
    assert _attempt(f"{base}-3", base) == 3 and _attempt(f"{base}-x", base) is None
    assert _attempt(f"{base}0-1", base) is None


def test_the_project_checkout_is_found():
    root = package.find_checkout()
    assert (root / "pyproject.toml").is_file() and (root / "pipeline" / "cli.py").is_file()
    with pytest.raises(UsageError, match="not a checkout"):
        package.find_checkout(root / "jobs")
