"""`pipeline schedule SPEC`: the entry for the scheduler a user already runs (a crontab line,
a systemd timer and service, a Kubernetes CronJob); no scheduler of our own.

A scheduled run is `pipeline run SPEC --incremental`: each trigger processes the input files
that no earlier run committed, so a missed trigger is caught up by the next one, and a
trigger with nothing new finds nothing to do. Overlap is kept out at two levels:
- the rendered command takes a lock (`flock -n`) on a file named after the output folder,
  so a doubled or overlapping trigger on this machine exits at once with status BUSY (3)
  and changes nothing; the next trigger does its work;
- systemd never starts a timer's service while the previous start still runs, and the
  CronJob's `concurrencyPolicy: Forbid` skips a trigger while the last Job runs (its
  `pipeline submit` also refuses a second live job of the same spec).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ExitStatus, UsageError
from pipeline.ops.cron import to_systemd_calendar

FORMATS = ("crontab", "systemd", "kubernetes")


@dataclass(frozen=True)
class ScheduledJob:
    spec_path: Path  # absolute
    name: str  # pipeline-<spec stem>, for units, locks and logs
    cron: str
    output: str
    python: str
    checkout: Path
    lock_dir: Path
    log_dir: Path

    @property
    def lock_file(self) -> Path:
        # one lock per output folder: two schedules writing one output never overlap either
        key = hashlib.sha256(self.output.encode()).hexdigest()[:10]
        return self.lock_dir / f"{self.name}-{key}.lock"

    def run_argv(self) -> list[str]:
        return [self.python, "-m", "pipeline", "run", str(self.spec_path), "--incremental"]

    def locked_argv(self) -> list[str]:
        flock = shutil.which("flock") or "/usr/bin/flock"
        # -n: a second trigger does not queue behind the first; -E: and says BUSY
        return [flock, "-n", "-E", str(int(ExitStatus.BUSY)), str(self.lock_file), *self.run_argv()]


def load(spec_path: str | Path, lock_dir: Optional[str] = None, log_dir: Optional[str] = None,
         python: Optional[str] = None) -> ScheduledJob:
    from pydantic import ValidationError

    from pipeline.config import JobSpec
    from pipeline.ops.package import find_checkout

    path = Path(spec_path).resolve()
    try:
        spec = JobSpec.from_yaml(path)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UsageError(f"invalid job in {spec_path}: {loc}: {first['msg']}") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{spec_path}: {e}") from None
    if not spec.schedule:
        raise UsageError(f"{spec_path} has no schedule: add e.g. `schedule: \"0 2 * * *\"` (cron syntax) to it")
    cache = Path.home() / ".cache" / "pipeline"
    name = "pipeline-" + (re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "job")
    return ScheduledJob(
        spec_path=path, name=name, cron=spec.schedule, output=spec.output.path,
        python=python or sys.executable, checkout=find_checkout(),
        lock_dir=Path(lock_dir or cache / "locks").expanduser().resolve(),
        log_dir=Path(log_dir or cache / "logs").expanduser().resolve(),
    )


def crontab(job: ScheduledJob) -> str:
    """One crontab line (with a comment above it). cron runs it with /bin/sh; '%' is special there."""
    q = shlex.quote
    log = job.log_dir / f"{job.name}.log"
    cmd = (f"cd {q(str(job.checkout))} && mkdir -p {q(str(job.lock_dir))} {q(str(job.log_dir))} && "
           f"{shlex.join(job.locked_argv())} >> {q(str(log))} 2>&1")
    return (f"# {job.name}: {job.spec_path} ({job.cron}); exit 3 = an earlier run still holds the output\n"
            f"{job.cron} {cmd.replace('%', chr(92) + '%')}\n")


def systemd(job: ScheduledJob) -> dict[str, str]:
    """A oneshot service and its timer, by file name."""
    def quote(arg: str) -> str:  # systemd's ExecStart quoting: double quotes, backslash escapes
        return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else json.dumps(arg, ensure_ascii=False)

    # systemd expands %-specifiers in ExecStart: a literal % must be doubled
    exec_start = " ".join(quote(a).replace("%", "%%") for a in job.locked_argv())
    calendars = "\n".join(f"OnCalendar={c}" for c in to_systemd_calendar(job.cron))
    service = f"""\
# {job.name}.service: one scheduled run of {job.spec_path}
# Started by {job.name}.timer; logs: journalctl --user -u {job.name}
[Unit]
Description=pipeline job {job.spec_path.name} (incremental)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory={job.checkout}
Environment=PYTHONUNBUFFERED=1
ExecStartPre={shutil.which("mkdir") or "/bin/mkdir"} -p {quote(str(job.lock_dir))}
ExecStart={exec_start}
"""
    timer = f"""\
# {job.name}.timer: cron '{job.cron}'. Install both files into ~/.config/systemd/user/, then
#   systemctl --user daemon-reload && systemctl --user enable --now {job.name}.timer
# (and `loginctl enable-linger $USER` so it runs while you are logged out).
[Unit]
Description=Schedule of {job.name} ({job.cron})

[Timer]
{calendars}
# a trigger missed while the machine was off runs at the next boot
Persistent=true

[Install]
WantedBy=timers.target
"""
    return {f"{job.name}.service": service, f"{job.name}.timer": timer}


def kubernetes(job: ScheduledJob, address: Optional[str] = None, image: Optional[str] = None) -> str:
    """A batch/v1 CronJob whose pod submits the job to a long-running RayCluster."""
    try:
        rel = job.spec_path.relative_to(job.checkout).as_posix()
    except ValueError:
        raise UsageError(
            f"{job.spec_path} is outside the project checkout {job.checkout}: for Kubernetes the spec must be "
            "part of the project (e.g. jobs/), which the image carries"
        ) from None
    address = address or "http://RAYCLUSTER-head-svc.NAMESPACE.svc.cluster.local:8265"
    image = image or "REGISTRY/pipeline:VERSION"
    command = ["python", "-m", "pipeline", "submit", rel, "--incremental", "--address", address, "--wait"]
    d = json.dumps
    return f"""\
# {job.name}: submits {rel} to a running RayCluster on the schedule '{job.cron}'.
# Change: image (this project installed at /app, e.g. FROM rayproject/ray:2.60.0-py311 plus
# `pip install /app`), the RayCluster head service in --address, the namespace, and the Secret
# with the cluster's token (KubeRay authOptions create one) if the cluster uses token auth.
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {job.name}
spec:
  schedule: {d(job.cron)}
  # timeZone: Etc/UTC             # default: the kube-controller-manager's time zone
  concurrencyPolicy: Forbid        # a trigger while the last run still goes is skipped, never doubled
  startingDeadlineSeconds: 3600    # a trigger missed by less (controller down) still starts
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 3
  jobTemplate:
    spec:
      backoffLimit: 0              # no retry here: the next trigger resumes (incremental, committed parts kept)
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: submit
              image: {d(image)}
              workingDir: /app
              command: {d(command)}
              env:
                - name: RAY_AUTH_TOKEN
                  valueFrom:
                    secretKeyRef:
                      name: RAYCLUSTER-auth   # the RayCluster's token Secret
                      key: auth_token
                      optional: true
              resources:
                requests: {{cpu: 100m, memory: 256Mi}}
"""


def render(job: ScheduledJob, fmt: str, address: Optional[str] = None, image: Optional[str] = None) -> dict[str, str]:
    """File name -> content (crontab and kubernetes give one entry, systemd two)."""
    if fmt == "crontab":
        return {f"{job.name}.crontab": crontab(job)}
    if fmt == "systemd":
        return systemd(job)
    if fmt == "kubernetes":
        return {f"{job.name}.cronjob.yaml": kubernetes(job, address, image)}
    raise UsageError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
