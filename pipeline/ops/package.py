"""What a submitted job carries to the cluster: the project checkout and the spec as the
cluster must see it.

The job's working_dir is the project checkout, zipped here exactly as Ray would zip it
(.gitignore, .rayignore and Ray's default excludes respected: `.git`, `.venv`, ...), so
that its size is checked before anything is sent and the zip that was checked is the one
uploaded. The spec goes into the zip as `_submitted/<name>.yaml`, and the job runs
`python -m pipeline run _submitted/<name>.yaml --address auto` in that folder.

Paths in a spec are relative to the spec file. On a cluster:
- URIs (s3://, gs://, http(s)://) mean the same thing everywhere: the way to go for data.
- Absolute paths and ~ mean that path on the cluster's nodes (a shared mount such as
  /mnt/models, or the one machine of a single-node cluster). They are not checked here.
- A relative input or model path must point inside the project checkout and be part of
  the upload (not ignored); it is rewritten so that it resolves inside the job's working
  directory on every node. A relative output path is refused: it would land in the job's
  temporary working directory, on whichever node wrote each part, and vanish with it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.errors import UsageError

logger = logging.getLogger(__name__)

SPEC_DIR = "_submitted"  # where the carried spec lands inside the job's working_dir


@dataclass(frozen=True)
class JobPackage:
    """A job ready to submit: the zip to upload as working_dir and what runs in it."""

    zip_path: Path
    checkout: Path
    spec_name: str  # file stem of the spec, for ids and messages
    spec_hash: str  # identity of the job: the carried spec's content (see submit.submission_base)
    spec_rel: str  # the spec inside the working_dir
    output: str  # output path as the cluster sees it
    upload_bytes: int
    files: int

    @property
    def entrypoint(self) -> str:
        # `--address auto`: join the cluster the job runs on (RAY_ADDRESS is set for the driver)
        return f"python -m pipeline run {self.spec_rel} --address auto"


def find_checkout(start: Optional[Path] = None) -> Path:
    """The project checkout holding this `pipeline` package (pyproject.toml next to it)."""
    here = Path(start) if start else Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file() and (here / "pipeline" / "__init__.py").is_file():
        return here
    raise UsageError(
        f"{here} is not a checkout of this project (no pyproject.toml beside pipeline/): "
        "pass --working-dir with the project folder to upload"
    )


def upload_limit() -> int:
    """Largest working_dir zip the Jobs API takes over HTTP (the dashboard's request limit)."""
    from ray._private import ray_constants

    return int(ray_constants.DASHBOARD_CLIENT_MAX_SIZE)


def build_package(spec_path: str | Path, checkout: Path, incremental: bool = False,
                  scratch: Optional[Path] = None) -> JobPackage:
    """Check the spec, make its cluster view and zip the checkout with it."""
    from pydantic import ValidationError

    from pipeline.config import JobSpec

    spec_path = Path(spec_path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read job spec {spec_path}: {e.strerror}") from None
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise UsageError(f"{spec_path}: a job spec is a YAML mapping, got {type(raw).__name__}")
    if incremental:
        raw["incremental"] = True
    try:  # the same validation as `pipeline run`, before anything is zipped or sent
        JobSpec.from_yaml(spec_path, {"incremental": True} if incremental else None)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UsageError(f"invalid job in {spec_path}: {loc}: {first['msg']}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None

    checkout = checkout.resolve()
    scratch = Path(scratch or tempfile.mkdtemp(prefix="pipeline-submit-"))
    scratch.mkdir(parents=True, exist_ok=True)
    zip_path = scratch / "working_dir.zip"
    _zip_checkout(checkout, zip_path)
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
    spec_dir = spec_path.resolve().parent
    cluster = _cluster_view(raw, spec_dir, checkout, names)
    carried = yaml.safe_dump(cluster, sort_keys=False)
    spec_hash = hashlib.sha256(yaml.safe_dump(cluster, sort_keys=True).encode()).hexdigest()[:10]
    name = re.sub(r"[^a-z0-9]+", "-", spec_path.stem.lower()).strip("-")[:40] or "job"
    spec_rel = f"{SPEC_DIR}/{name}.yaml"
    header = (f"# Submitted by `pipeline submit` from {spec_path.resolve()}; paths rewritten for the\n"
              f"# cluster (relative ones now resolve inside this working directory).\n")
    with zipfile.ZipFile(zip_path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(spec_rel, header + carried)
    size = zip_path.stat().st_size
    limit = upload_limit()
    if size > limit:
        raise UsageError(
            f"the job's working_dir ({checkout}) zips to {size / 2**20:.0f} MiB, over the Jobs API's "
            f"{limit / 2**20:.0f} MiB; largest: {_largest(checkout, names)}. Add them to .rayignore "
            "(or .gitignore), or put data in object storage and name it by URI in the spec"
        )
    logger.info("working_dir: %s, %d files, %.1f MiB zipped", checkout, len(names), size / 2**20)
    return JobPackage(zip_path, checkout, name, spec_hash, spec_rel, cluster["output"]["path"], size, len(names))


def _zip_checkout(checkout: Path, zip_path: Path) -> None:
    # Ray's own packaging (pinned Ray): same ignore files and default excludes as a
    # working_dir given as a folder, so what is checked here is what Ray would send.
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    quiet = logging.getLogger(__name__ + ".zip")  # Ray's per-package INFO lines are noise here
    quiet.setLevel(logging.WARNING)
    create_package(str(checkout), zip_path, include_gitignore=True,
                   excludes=ray_constants.get_runtime_env_default_excludes(), logger=quiet)


def _cluster_view(raw: dict[str, Any], spec_dir: Path, checkout: Path, uploaded: set[str]) -> dict[str, Any]:
    """The spec with relative paths rewritten to resolve from `_submitted/` in the working dir."""
    out = dict(raw)

    def move(field: str, p: str, kind: str) -> str:
        if "://" in p or p.startswith("~") or Path(p).is_absolute():
            return p  # URIs; paths on the cluster's nodes
        local = (spec_dir / p).resolve()
        try:
            rel = local.relative_to(checkout).as_posix()
        except ValueError:
            raise UsageError(
                f"{field} {p!r} is relative and outside the project checkout {checkout}, so it does not "
                "travel with the job: give a URI (s3://...) or an absolute path that exists on the cluster's nodes"
            ) from None
        _check_uploaded(field, p, rel, kind, uploaded)
        return f"../{rel}"

    if isinstance(raw.get("input"), dict):
        inp = dict(raw["input"])
        inp["paths"] = [move("input.paths", p, "input") if isinstance(p, str) else p for p in inp.get("paths", [])]
        out["input"] = inp
    output = dict(raw.get("output") or {})
    path = output.get("path")
    if isinstance(path, str) and not ("://" in path or path.startswith("~") or Path(path).is_absolute()):
        raise UsageError(
            f"output.path {path!r} is relative: on a cluster it would land in the job's temporary working "
            "directory, spread over the nodes that wrote it, and vanish with the job. Give a URI (s3://bucket/out) "
            "or an absolute path on storage every node shares"
        )
    out["output"] = output
    if isinstance(raw.get("model"), dict) and isinstance(raw["model"].get("path"), str):
        out["model"] = {**raw["model"], "path": move("model.path", raw["model"]["path"], "model")}
    return out


def _check_uploaded(field: str, given: str, rel: str, kind: str, uploaded: set[str]) -> None:
    """A relative path must name files that are in the upload (exist, and are not ignored)."""
    if glob.has_magic(rel):
        import fnmatch

        hit = any(fnmatch.fnmatch(n, rel) or fnmatch.fnmatch(n, rel + "/*") for n in uploaded)
    else:
        hit = rel in uploaded or any(n.startswith(rel.rstrip("/") + "/") for n in uploaded)
    if not hit:
        raise UsageError(
            f"{field} {given!r} ({rel} in the checkout) is not part of the job's upload: it does not exist or is "
            "excluded by .gitignore/.rayignore. Put the data in object storage and use its URI, or un-ignore it"
        )


def _largest(checkout: Path, names: set[str], n: int = 3) -> str:
    sizes: dict[str, int] = {}
    for name in names:
        top = name.split("/", 1)[0]
        try:
            sizes[top] = sizes.get(top, 0) + os.path.getsize(checkout / name)
        except OSError:
            pass
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} ({v / 2**20:.0f} MiB)" for k, v in top)
