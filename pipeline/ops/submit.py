"""Jobs on a Ray cluster through its Jobs API: submit, status, logs, stop.

Submission ids. A job's id is `pipeline-<spec name>-<spec hash>-<attempt>`, where the hash
covers the spec as the cluster sees it (package.py). Before submitting, the cluster's jobs
with that prefix are listed:
- one still PENDING or RUNNING: the submit is refused ("already submitted as X: status
  RUNNING", exit status BUSY). Two submits racing past that check compute the same next
  id, and the Jobs API refuses a reused id, so exactly one of them starts;
- otherwise the next attempt number is used: a job that was stopped, failed or lost its
  cluster is resubmitted as attempt n+1 and resumes from its committed parts (the commit
  protocol; Ray never retries a job by itself), and one that succeeded runs again and finds
  nothing to compute (or, incremental, only the files that arrived since).

Why not the run id: computing it needs the model's fingerprint and a listing of the inputs,
and the submitting machine often has neither (the model lives on a mount of the cluster,
the bucket's credentials on its nodes). What a doubled submit must not do is start a second
live writer of the same job, which the spec's identity decides; what gets computed is
decided on the cluster by the run id, as for any `pipeline run`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, TextIO

from pipeline.errors import ExitStatus, PipelineError
from pipeline.ops.client import ClusterError, JobNotFound, connect
from pipeline.ops.package import JobPackage

logger = logging.getLogger(__name__)


class AlreadySubmitted(PipelineError):
    exit_status = ExitStatus.BUSY


@dataclass(frozen=True)
class Submitted:
    job_id: str
    attempt: int
    previous: Optional[str]  # "id STATUS" of the attempt before, if any


def submission_base(pkg: JobPackage) -> str:
    return f"pipeline-{pkg.spec_name}-{pkg.spec_hash}"


def _attempt(job_id: str, base: str) -> Optional[int]:
    m = re.fullmatch(re.escape(base) + r"-(\d+)", job_id or "")
    return int(m.group(1)) if m else None


def submit(client: Any, pkg: JobPackage) -> Submitted:
    base = submission_base(pkg)
    earlier = sorted(
        ((n, j) for j in client.list_jobs() if (n := _attempt(j.submission_id, base)) is not None),
        key=lambda nj: nj[0],
    )
    for _, j in earlier:
        if not j.status.is_terminal():
            raise AlreadySubmitted(f"already submitted as {j.submission_id}: status {j.status}")
    attempt = (earlier[-1][0] + 1) if earlier else 1
    previous = f"{earlier[-1][1].submission_id} {earlier[-1][1].status}" if earlier else None
    job_id = f"{base}-{attempt}"
    try:
        client.submit_job(
            entrypoint=pkg.entrypoint,
            submission_id=job_id,
            runtime_env={"working_dir": str(pkg.zip_path)},
            metadata={"pipeline_spec": pkg.spec_name, "pipeline_spec_hash": pkg.spec_hash,
                      "pipeline_output": pkg.output},
        )
    except RuntimeError as e:
        if "already exists" in str(e):  # lost the race to a twin submit
            raise AlreadySubmitted(f"already submitted as {job_id}: status {client.get_job_status(job_id)}") from None
        raise ClusterError(f"the cluster refused the job: {_last_line(e)}") from None
    return Submitted(job_id, attempt, previous)


def job_info(client: Any, job_id: str) -> Any:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        if "does not exist" in str(e):
            raise JobNotFound(f"no job {job_id} on this cluster (`ray job list` shows them)") from None
        raise ClusterError(_last_line(e)) from None


def wait(client: Any, job_id: str, timeout: Optional[float] = None, poll: float = 2.0) -> Any:
    """Poll until the job ends; returns its final JobDetails."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = job_info(client, job_id)
        if info.status.is_terminal():
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {info.status} after {timeout:.0f}s")
        time.sleep(poll)


def follow_logs(client: Any, job_id: str, out: TextIO = sys.stdout) -> None:
    """Stream the job's logs until it ends (the Jobs API's websocket tail)."""
    job_info(client, job_id)  # a clear "no such job" before the websocket's error

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as e:
        raise ClusterError(f"log stream of {job_id} broke: {_last_line(e)}") from None


def exit_status(info: Any) -> int:
    """The `pipeline` exit status a finished job stands for: the driver's own when it is one
    of ours (a job's `pipeline run` exits like a local one), else FAILED."""
    from ray.job_submission import JobStatus

    if info.status == JobStatus.SUCCEEDED:
        return ExitStatus.OK
    code = getattr(info, "driver_exit_code", None)
    if code in {s.value for s in ExitStatus} and code != ExitStatus.OK:
        return int(code)
    return ExitStatus.FAILED


def last_error_line(client: Any, job_id: str) -> str:
    """The most telling line of a failed job's log: its last `error:` line, else its last line."""
    try:
        lines = [ln for ln in client.get_job_logs(job_id).splitlines() if ln.strip()]
    except RuntimeError:
        return ""
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    return lines[-1].strip()[:300] if lines else ""


def stop(client: Any, job_id: str, timeout: float = 60) -> Any:
    """Ask the job to stop (SIGTERM to its driver, SIGKILL a few seconds later) and wait for it."""
    job_info(client, job_id)
    client.stop_job(job_id)  # False when it had already ended: fine either way
    return wait(client, job_id, timeout=timeout, poll=0.5)


def describe(info: Any) -> str:
    def when(ms: Optional[int]) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"

    lines = [f"{info.submission_id}: {info.status}"]
    if info.message:
        lines.append(f"  {info.message}")
    lines.append(f"  started {when(info.start_time)}  ended {when(info.end_time)}")
    if info.entrypoint:
        lines.append(f"  entrypoint: {info.entrypoint}")
    out = (info.metadata or {}).get("pipeline_output")
    if out:
        lines.append(f"  output: {out}")
    return "\n".join(lines)


def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip() and ln.strip() != "."]
    return lines[-1].strip()[:300] if lines else type(e).__name__


__all__ = ["AlreadySubmitted", "Submitted", "connect", "describe", "exit_status", "follow_logs", "job_info",
           "last_error_line", "stop", "submission_base", "submit", "wait"]
