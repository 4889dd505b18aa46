"""The report as one self-contained HTML page: inline CSS and SVG charts, no script, no
network. Rendered with Jinja2 (autoescaped: error messages and row ids are data)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.report import charts
from pipeline.report.data import RunFacts, actor_time, wall_time

# Every section the page has, in order: (id, heading). Tests check that each is there.
SECTIONS = [
    ("overview", "Overview"),
    ("tasks", "Tasks"),
    ("throughput", "Throughput over time"),
    ("progress", "Requests finished and planned"),
    ("in-flight", "Requests in flight"),
    ("errors", "Errors by kind"),
    ("output-lengths", "Output lengths and truncation"),
    ("sentiment", "Sentiment labels"),
    ("tokens", "Tokens per task"),
    ("time", "Where the time went"),
]

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Run {{ f.run_id }} · pipeline report</title>
<style>
 body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
 main { max-width: 980px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
 h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 30px 0 8px; border-bottom: 1px solid #e4e4e4; padding-bottom: 4px; }
 .sub { color: #666; margin: 0 0 14px; } .note { color: #666; font-size: 12.5px; margin: 4px 0 8px; }
 table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
 th, td { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
 td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
 .kv td:first-child { color: #555; } .status-published { color: #2f7a3e; font-weight: 600; } .status-failed { color: #b23; font-weight: 600; }
 .ex { font-family: ui-monospace, monospace; font-size: 12px; color: #444; } svg { max-width: 100%; height: auto; }
 .empty { color: #888; font-style: italic; }
</style></head>
<body><main>
<h1>Run {{ f.run_id }}</h1>
<p class="sub">{{ f.output }} · <span class="status-{{ status }}">{{ status }}</span>{% if started %} · started {{ started }}{% endif %}</p>

<section id="overview"><h2>Overview</h2>
<table class="kv">
{% for k, v in overview %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if f.ledger.get("error") %}<p class="status-failed">error: {{ f.ledger["error"] }}</p>{% endif %}
</section>

<section id="tasks"><h2>Tasks</h2>
<table><tr><th>task</th><th class="n">ok</th><th class="n">failed</th><th class="n">answers cut or empty</th><th class="n">inputs truncated</th><th class="n">prompt tokens</th><th class="n">output tokens</th><th class="n">median output</th></tr>
{% for t in f.tasks %}<tr><td>{{ t.name }}</td><td class="n">{{ "{:,}".format(t.rows) }}</td><td class="n">{{ "{:,}".format(t.errors) }}</td><td class="n">{{ "{:,}".format(t.output_truncated) }}</td><td class="n">{{ "{:,}".format(t.input_truncated) }}</td><td class="n">{{ "{:,}".format(t.prompt_tokens) }}</td><td class="n">{{ "{:,}".format(t.output_tokens) }}</td><td class="n">{{ median(t.output_lengths) }}</td></tr>
{% endfor %}</table>
</section>

{% macro chart(svg, empty) %}{% if svg %}{{ svg | safe }}{% else %}<p class="empty">{{ empty }}</p>{% endif %}{% endmacro %}

<section id="throughput"><h2>Throughput over time</h2>
<p class="note">Generated tokens and finished requests per second, over the last 30 s at each point; grey: start-up, before an engine served.</p>
{{ chart(svg.throughput, "no timeline was recorded for this run") }}</section>

<section id="progress"><h2>Requests finished and planned</h2>
<p class="note">A request is one (row, task). Planned requests are estimated from the bytes read until every input file is read.</p>
{{ chart(svg.progress, "no timeline was recorded for this run") }}</section>

<section id="in-flight"><h2>Requests in flight</h2>
<p class="note">Requests inside the engines, those waiting in their schedulers, and the KV cache in use.</p>
{{ chart(svg.in_flight, "no timeline was recorded for this run") }}</section>

<section id="errors"><h2>Errors by kind</h2>
{% if f.errors %}{{ svg.errors | safe }}
<table><tr><th>kind</th><th class="n">records</th><th>tasks</th><th>examples</th></tr>
{% for e in f.errors %}<tr><td>{{ e.kind }}</td><td class="n">{{ "{:,}".format(e.count) }}</td><td>{% for t, n in e.tasks.items() %}{{ t }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td>{% for x in e.examples %}<div class="ex">{{ x.row_id }} ({{ x.task }}): {{ x.message | truncate(220) }}</div>{% endfor %}</td></tr>
{% endfor %}</table>
<p class="note">All of them: the <code>errors</code> dataset (<code>pipeline.io.commit.read_dataset(OUT, "errors")</code>); <code>pipeline retry-errors</code> recomputes chosen kinds.</p>
{% else %}<p class="empty">no error records: every row of every task has a result</p>{% endif %}
</section>

<section id="output-lengths"><h2>Output lengths and truncation</h2>
<p class="note">Output tokens per answer, by task; right: answers cut at <code>max_tokens</code> or empty (column <code>output_truncated</code>).</p>
{{ chart(svg.output_lengths, "no results to show") }}</section>

<section id="sentiment"><h2>Sentiment labels</h2>
{{ chart(svg.sentiment, "this run has no sentiment results") }}</section>

<section id="tokens"><h2>Tokens per task</h2>
{{ chart(svg.tokens, "no token counts") }}</section>

<section id="time"><h2>Where the time went</h2>
<p class="note">Wall time from the command's start: start-up (plan, Ray, the first actor, the engine's imports and model load), processing once an engine served, the publish.</p>
{{ chart(svg.wall, "this run recorded no start-up figures") }}
{% if wall %}<table>{% for s in wall %}<tr><td>{{ s.label }}</td><td class="n">{{ "%.1f" | format(s.seconds) }} s</td><td class="note">{{ s.note }}</td></tr>{% endfor %}</table>{% endif %}
<p class="note">Inside the actors, summed over actors and batches in flight (so it can exceed the wall time):</p>
{{ chart(svg.actor, "no actor figures") }}
</section>
<p class="note">Made by <code>pipeline report</code> on {{ now }}{% if f.log_uri %} · log: <code>{{ f.log_uri }}</code>{% endif %}</p>
</main></body></html>
"""


def overview_rows(f: RunFacts) -> list[tuple[str, str]]:
    s = f.summary
    rows: list[tuple[str, str]] = []
    if f.ledger.get("model") or s.model:
        rows.append(("model", str(f.ledger.get("model") or s.model)))
    rows.append(("input files", f"{len(f.ledger.get('inputs', [])) or s.input_files:,}"))
    rows.append(("rows", f"{s.rows:,} ({s.rows_computed:,} computed now, {s.rows_resumed:,} resumed)"))
    rows.append(("tokens", f"{s.prompt_tokens:,} in, {s.output_tokens:,} out"))
    if s.wall_seconds is not None:
        rows.append(("wall time", f"{s.wall_seconds:,.1f} s"))
    if s.rows_per_second is not None:
        rows.append(("throughput", f"{s.rows_per_second:,} rows/s, {s.output_tokens_per_second:,} output tok/s "
                                   "(start-up included)"))
    if s.output_tokens_per_second_after_startup is not None:
        rows.append(("after start-up", f"{s.rows_per_second_after_startup:,} rows/s, "
                                       f"{s.output_tokens_per_second_after_startup:,} output tok/s"))
    if s.startup_seconds is not None:
        rows.append(("start-up", f"{s.startup_seconds:,.1f} s (engine load {s.engine_load_seconds or 0:,.1f} s)"))
    if s.prefix_cache_hit_rate is not None:
        rows.append(("prefix cache", f"{s.prefix_cache_hit_rate:.1%} of prompt tokens served from the cache"))
    if s.version is not None:
        rows.append(("published version", str(s.version)))
    return rows + evaluation_rows(s)


def evaluation_rows(s: Any) -> list[tuple[str, str]]:
    """The run summary's evaluation (quality signals per task, metrics against gold columns),
    in the words the printed summary uses (`pipeline.eval.report.summary_lines`)."""
    if s.evaluation is None:
        return []
    from pipeline.eval.report import summary_lines

    rows = []
    for line in summary_lines(s.evaluation.model_dump(mode="json", exclude_none=True)):
        text = line.strip()
        if text.startswith(("quality ", "metrics ")):
            kind, task, rest = text.split(None, 2)
            rows.append((f"{kind}: {task}", rest))
        else:  # "evaluation failed: ..."
            rows.append(("evaluation", text))
    return rows


def _median(xs: list[int]) -> str:
    if not xs:
        return "-"
    ys = sorted(xs)
    n = len(ys)
    m = ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2
    return f"{m:g}"


def render(f: RunFacts) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    svg: dict[str, Any] = {
        name: getattr(charts, fn)(f)
        for name, fn in [("throughput", "throughput"), ("progress", "progress"), ("in_flight", "in_flight"),
                         ("errors", "errors"), ("output_lengths", "output_lengths"), ("sentiment", "sentiment"),
                         ("tokens", "tokens"), ("wall", "wall"), ("actor", "actor")]
    }
    started = f.ledger.get("started_at")
    return env.from_string(TEMPLATE).render(
        f=f, svg=svg, status=f.ledger.get("status", f.summary.status), overview=overview_rows(f),
        started=dt.datetime.fromtimestamp(started).isoformat(sep=" ", timespec="seconds") if started else None,
        wall=wall_time(f.summary), actor=actor_time(f.summary), median=_median,
        now=dt.datetime.now().isoformat(sep=" ", timespec="seconds"),
    )
