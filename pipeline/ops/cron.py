"""Cron expressions: the one schedule syntax a job spec takes, checked here, and turned into
systemd's calendar syntax for `pipeline schedule --format systemd`.

Only standard 5-field cron (minute hour day-of-month month day-of-week, with `*`, lists,
ranges, steps and English month/day names) and the usual macros are accepted: that is what
crontab, Kubernetes CronJob and KubeRay's RayCronJob all understand. croniter (which also
takes seconds fields, `L`, `W`, `#`, `H`) checks the ranges and expands the fields.
"""

from __future__ import annotations

import re

from pipeline.errors import UsageError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_NAMES = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat"
_ATOM = rf"(\d+|{_NAMES})"
# one list element: *, */s, a, a-b, a/s, a-b/s
_ELEMENT = re.compile(rf"^(\*|{_ATOM}(-{_ATOM})?)(/\d+)?$", re.IGNORECASE)
_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def check_cron(expr: str) -> str:
    """The expression, normalized (single spaces), or UsageError saying what is wrong."""
    text = " ".join(str(expr).split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise UsageError(f"unknown cron macro {text!r}: use one of {', '.join(MACROS)} or 5 fields")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise UsageError(
            f"cron expression {text!r} has {len(fields)} fields; a schedule has 5: "
            "minute hour day-of-month month day-of-week (e.g. '0 2 * * *')"
        )
    for name, field in zip(FIELDS, fields):
        for element in field.split(","):
            if not _ELEMENT.match(element):
                raise UsageError(f"cron expression {text!r}: {name} field {field!r} is not standard cron syntax")
    from croniter import croniter

    if not croniter.is_valid(text):
        raise UsageError(f"cron expression {text!r} has a value out of range (minute 0-59, hour 0-23, "
                         "day 1-31, month 1-12, weekday 0-7)")
    return text


def expand(expr: str) -> list[list]:
    """Per field, the sorted values it allows, or ['*'] for every value (croniter's expansion;
    day-of-week 7 becomes 0, Sunday)."""
    from croniter import croniter

    text = MACROS.get(expr, expr)
    return [list(f) for f in croniter(text).expanded]


def to_systemd_calendar(expr: str) -> list[str]:
    """systemd OnCalendar= values that together fire exactly when cron would.

    cron fires when day-of-month OR day-of-week matches if both are restricted; systemd
    requires both. So that case becomes two OnCalendar= lines (a timer fires on either).
    """
    minute, hour, dom, month, dow = expand(check_cron(expr))

    def nums(values: list, width: int = 2) -> str:
        return "*" if values == ["*"] else ",".join(f"{v:0{width}d}" for v in values)

    def calendar(d_o_m: list, d_o_w: list) -> str:
        day = "" if d_o_w == ["*"] else ",".join(_WEEKDAYS[v] for v in d_o_w) + " "
        return f"{day}*-{nums(month)}-{nums(d_o_m)} {nums(hour)}:{nums(minute)}:00"

    if dom != ["*"] and dow != ["*"]:
        return [calendar(dom, ["*"]), calendar(["*"], dow)]
    return [calendar(dom, dow)]
