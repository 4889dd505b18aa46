"""An output that cannot be written ends the run with one line that says what to do, exit
status 1, nothing partial published, and a rerun that resumes once it is fixed.

Disk full is a real full file system (a 4 MiB tmpfs, filled up; skipped where mounting is not
allowed). Permission denied is a real refusal by the kernel: a folder without write
permission when the tests run as a normal user; as root (who may write anyway) a
read-only tmpfs instead, and the EACCES message is checked on an injected error."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest

from clijob import write_jsonl_corpus, write_spec
from harness import assert_exactly_once, error_line, fake_model, run_fake
from pipeline.errors import ExitStatus
from pipeline.io.manifest import read_manifest
from pipeline.io.store import OutputError, Store


@contextlib.contextmanager
def tmpfs(path, size: str, ro: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _job(tmp_path, out):
    ids = write_jsonl_corpus(tmp_path / "corpus", {"a.jsonl": 120, "b.jsonl": 120})
    spec = write_spec(
        tmp_path / "job.yaml",
        input={"paths": [str(tmp_path / "corpus")], "id_field": "id"},
        output={"path": str(out), "rows_per_unit": 20},
        tasks={"sentiment": {}, "summarization": {}},
        model={"path": str(fake_model(tmp_path / "model"))},
        engine={"batch_rows": 8},
    )
    return ids, spec


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_is_one_line_and_the_rerun_resumes(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        ids, spec = _job(tmp_path, out)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave room for a few parts only
            with contextlib.suppress(OSError):
                f.write(b"\0" * (4096 * 1024 - 48 * 1024))
        p = run_fake("run", str(spec), check=False)
        assert p.returncode == ExitStatus.FAILED
        line = error_line(p)
        assert "no space left" in line and "the same command resumes" in line, line
        assert read_manifest(Store(str(out))) is None
        filler.unlink()
        p = run_fake("run", str(spec))
        assert "resumed: 0" not in p.stdout  # what was committed before the disk filled is kept
        assert_exactly_once(out, ids)


def test_permission_denied_is_one_line(tmp_path):
    if os.geteuid() != 0:
        out_parent = tmp_path / "locked"
        out_parent.mkdir()
        out_parent.chmod(0o555)
        out = out_parent / "out"
        ids, spec = _job(tmp_path, out)
        p = run_fake("run", str(spec), check=False)
        out_parent.chmod(0o755)
        assert p.returncode == ExitStatus.FAILED and "permission denied" in error_line(p)
        return
    with tmpfs(tmp_path / "ro", "64k", ro=True) as ro:
        ids, spec = _job(tmp_path, ro / "out")
        p = run_fake("run", str(spec), check=False)
        assert p.returncode == ExitStatus.FAILED and "read-only" in error_line(p)


def test_eacces_message_says_what_to_do(tmp_path, monkeypatch):
    """As root no folder refuses a write; the kernel's EACCES is injected here (a fake)."""
    store = Store(str(tmp_path))

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match="permission denied; make the folder writable"):
        store.write_bytes("x", b"1")


def test_an_output_error_in_an_actor_reaches_the_person_as_its_own_line():
    """Through Ray, an actor's OutputError arrives wrapped (RayTaskError, whose text is a
    traceback) inside Ray Data's own error: the run reports the original line and status."""
    from ray.exceptions import RayTaskError

    from pipeline.batch.execution import _pipeline_error

    cause = OutputError("cannot write OUT/_staging/x.parquet: no space left on the device")
    wrapped = RayTaskError("MapBatches(InferenceActor)", "Traceback (most recent call last): ...", cause)
    try:
        try:
            raise wrapped.as_instanceof_cause()
        except Exception as e:
            raise RuntimeError("Ray Data: a task failed") from e
    except RuntimeError as outer:
        found = _pipeline_error(outer)
    assert found is not None and str(found) == str(cause) and found.exit_status == ExitStatus.FAILED
