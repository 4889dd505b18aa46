"""Cron expressions in a job spec: what is accepted, and systemd calendars that fire exactly
when cron does (checked against systemd's own parser, `systemd-analyze calendar`)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import pytest
from croniter import croniter

from pipeline.config import JobSpec
from pipeline.errors import UsageError
from pipeline.ops.cron import check_cron, to_systemd_calendar

BASE = {"input": {"paths": ["x.jsonl"]}, "output": {"path": "/tmp/out"}, "tasks": {"sentiment": {}}}


@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * 1-5", "0 0 1,15 * sun", "30 4 * jan,jul mon-fri",
                                  "@daily", "@hourly", "5 */6 1-10/3 * *", "0 0 * * 7"])
def test_standard_cron_is_accepted(expr):
    assert JobSpec.model_validate({**BASE, "schedule": expr}).schedule == check_cron(expr)


@pytest.mark.parametrize("expr, why", [
    ("0 2 * *", "has 4 fields"),
    ("0 0 2 * * *", "has 6 fields"),  # croniter would take seconds; crontab and Kubernetes don't
    ("61 * * * *", "out of range"),
    ("0 2 L * *", "not standard cron"),
    ("0 2 * * 1#2", "not standard cron"),
    ("@reboot", "unknown cron macro"),
    ("H 2 * * *", "not standard cron"),
])
def test_non_standard_or_invalid_cron_is_refused_naming_the_field(expr, why):
    with pytest.raises(UsageError, match=why):
        check_cron(expr)
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate({**BASE, "schedule": expr})
    assert e.value.errors()[0]["loc"] == ("schedule",)


def test_schedule_does_not_change_the_run_identity():
    a = JobSpec.model_validate(BASE)
    b = JobSpec.model_validate({**BASE, "schedule": "0 2 * * *"})
    assert a.result_fingerprint("m") == b.result_fingerprint("m")


def _systemd_next(calendar: str, n: int) -> list[dt.datetime]:
    out = subprocess.run(["systemd-analyze", "calendar", f"--iterations={n}", calendar],
                         capture_output=True, text=True, check=True, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"}).stdout
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out)
    return [dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in stamps]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 9-17 * * 1-5", "0 0 1,15 * 0", "30 4 * jan,jul sun",
                                  "5 */6 1-10/3 * *", "@weekly", "0 12 13 * 5"])
def test_systemd_calendar_fires_when_cron_does(expr):
    n = 12
    got = sorted(set(t for cal in to_systemd_calendar(expr) for t in _systemd_next(cal, n)))[:n]
    # croniter from the same "now" systemd used: the first systemd time minus a minute is safe
    # only if cron agrees on it, so start from the current minute instead.
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, second=0, microsecond=0)
    it = croniter(expr if not expr.startswith("@") else {"@weekly": "0 0 * * 0"}[expr], now)
    want = [it.get_next(dt.datetime) for _ in range(n)]
    assert got == want, (to_systemd_calendar(expr), got[:3], want[:3])
