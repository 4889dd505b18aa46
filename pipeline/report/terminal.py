"""The report as tables on the terminal (rich): the same facts as the page, without charts."""

from __future__ import annotations

from typing import Any

from pipeline.report.data import RunFacts, actor_time, wall_time
from pipeline.report.page import _median, overview_rows


def print_report(f: RunFacts, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    status = f.ledger.get("status", f.summary.status)
    console.print(f"[bold]Run {f.run_id}[/bold]  {escape(f.output)}  [{'green' if status == 'published' else 'red'}]{status}[/]")
    t = Table(show_header=False, box=None, pad_edge=False)
    for k, v in overview_rows(f):
        t.add_row(f"[dim]{k}[/dim]", escape(v))
    console.print(t)
    if f.ledger.get("error"):
        console.print(f"[red]error:[/red] {escape(f.ledger['error'])}")

    t = Table(title="tasks (cut: answers cut at max_tokens or empty; tok: tokens; median: output tokens per answer)",
              title_justify="left")
    t.add_column("task", no_wrap=True)
    for col in ("ok", "failed", "cut", "tok in", "tok out", "median"):
        t.add_column(col, justify="right", no_wrap=True)
    for x in f.tasks:
        t.add_row(x.name, f"{x.rows:,}", f"{x.errors:,}", f"{x.output_truncated:,}", f"{x.prompt_tokens:,}",
                  f"{x.output_tokens:,}", _median(x.output_lengths))
    console.print(t)
    cut_inputs = [f"{x.name} {x.input_truncated:,}" for x in f.tasks if x.input_truncated]
    if cut_inputs:
        console.print(f"inputs truncated to fit the context: {', '.join(cut_inputs)}")

    if f.errors:
        t = Table(title="errors by kind", title_justify="left")
        t.add_column("kind")
        t.add_column("records", justify="right")
        t.add_column("example")
        for e in f.errors:
            ex = e.examples[0] if e.examples else {"row_id": "", "task": "", "message": ""}
            msg = ex["message"] if len(ex["message"]) <= 100 else ex["message"][:97] + "..."
            t.add_row(e.kind, f"{e.count:,}", escape(f"{ex['row_id']} ({ex['task']}): {msg}"))
        console.print(t)

    sent = next((x for x in f.tasks if x.name == "sentiment" and x.labels), None)
    if sent:
        total = sum(sent.labels.values())
        labels = ", ".join(f"{k} {v:,} ({v / total:.0%})" for k, v in sorted(sent.labels.items(), key=lambda kv: -kv[1]))
        console.print(f"sentiment labels: {labels}")

    slices = wall_time(f.summary)
    if slices:
        t = Table(title="where the time went", title_justify="left")
        t.add_column("")
        t.add_column("seconds", justify="right")
        t.add_column("")
        for s in slices:
            t.add_row(s.label, f"{s.seconds:,.1f}", f"[dim]{s.note}[/dim]")
        for s in actor_time(f.summary):
            t.add_row(f"[dim]actors:[/dim] {s.label}", f"{s.seconds:,.1f}", f"[dim]{s.note}[/dim]")
        console.print(t)
    if f.timeline:
        peak = max((r.get("tokens_per_s") or 0) for r in f.timeline)
        inflight = max((r.get("in_flight") or 0) for r in f.timeline)
        console.print(f"timeline: {len(f.timeline)} samples; peak {peak:,.0f} generated tok/s, "
                      f"at most {inflight:,} requests in flight")
