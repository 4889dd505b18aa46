"""The report's charts, drawn with matplotlib into inline SVG: the page needs no network and
no script to show them. `matplotlib.figure.Figure` directly (not pyplot): no global state.

Each function returns the SVG text of one chart, or None when the run has nothing to show
there (the page then says why in words).
"""

from __future__ import annotations

import functools
import io
from typing import Any, Callable, Optional

from pipeline.report.data import RunFacts, TimeSlice, actor_time, wall_time

COLORS = ["#3b6fb6", "#e07b39", "#4c9a5b", "#b84a62", "#7d5fb2", "#8c8c8c", "#c9a227"]
XLABEL = "seconds since the Ray pipeline started (after planning and Ray start-up)"
_STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"}


def _styled(fn: Callable[[RunFacts], Optional[str]]) -> Callable[[RunFacts], Optional[str]]:
    """Draw under the report's style (axes take rcParams when they are made)."""

    @functools.wraps(fn)
    def wrapper(facts: RunFacts) -> Optional[str]:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(facts)

    return wrapper


def _figure(width: float = 7.5, height: float = 2.8):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline


def _series(facts: RunFacts, key: str) -> tuple[list[float], list[Optional[float]]]:
    if not facts.timeline:
        return [], []
    t0 = facts.timeline[0]["t"]
    return [r["t"] - t0 for r in facts.timeline], [r.get(key) for r in facts.timeline]


def _shade_startup(ax: Any, facts: RunFacts) -> None:
    """Grey where no engine was serving yet: throughput there is zero by construction."""
    t0 = facts.timeline[0]["t"]
    running = [r["t"] - t0 for r in facts.timeline if r.get("phase") == "running"]
    if running and running[0] > 0:
        ax.axvspan(0, running[0], color="#eeeeee", zorder=0, label="start-up")


def _timeline_chart(ylabel: str, *keys: str) -> Callable[[Callable[..., list[Any]]], Callable[[RunFacts], Optional[str]]]:
    """A chart over the run's timeline, start-up shaded. The decorated function draws on the
    axes given the seconds and one series per key, and returns the axes whose series the
    legend lists; the chart is None when the run has no timeline."""

    def decorate(draw: Callable[..., list[Any]]) -> Callable[[RunFacts], Optional[str]]:
        def chart(facts: RunFacts) -> Optional[str]:
            if not facts.timeline:
                return None
            x = _series(facts, keys[0])[0]
            fig = _figure()
            ax = fig.add_subplot()
            _shade_startup(ax, facts)
            ax.set_xlabel(XLABEL)
            ax.set_ylabel(ylabel)
            axes = draw(ax, x, *(_series(facts, k)[1] for k in keys))
            handles, labels = [], []
            for a in axes:
                h, lab = a.get_legend_handles_labels()
                handles, labels = handles + h, labels + lab
            ax.legend(handles, labels, loc="upper left", frameon=False)
            return _svg(fig)

        chart.__name__ = chart.__qualname__ = draw.__name__  # a chart's name is its draw function's
        return _styled(chart)

    return decorate


def _right_axis(ax: Any, ylabel: str) -> Any:
    """A second y axis on the right, for a series of another unit."""
    ax2 = ax.twinx()
    ax2.set_ylabel(ylabel)
    ax2.spines["right"].set_visible(True)
    return ax2


@_timeline_chart("tokens/s", "tokens_per_s", "requests_per_s")
def throughput(ax: Any, x: list[float], tok: list[Optional[float]], req: list[Optional[float]]) -> list[Any]:
    ax.plot(x, [v or 0 for v in tok], color=COLORS[0], label="generated tokens/s")
    ax2 = _right_axis(ax, "requests/s")
    ax2.plot(x, [v or 0 for v in req], color=COLORS[1], linestyle="--", label="requests/s")
    return [ax, ax2]


@_timeline_chart("requests", "requests_done", "requests_planned")
def progress(ax: Any, x: list[float], done: list[Optional[float]], planned: list[Optional[float]]) -> list[Any]:
    ax.plot(x, done, color=COLORS[0], label="requests finished")
    ax.plot(x, [p if p is not None else float("nan") for p in planned], color=COLORS[5], linestyle=":",
            label="requests planned (estimated until every file is read)")
    return [ax]


@_timeline_chart("requests", "in_flight", "waiting", "kv_cache_usage")
def in_flight(ax: Any, x: list[float], fl: list[Optional[float]], waiting: list[Optional[float]],
              kv: list[Optional[float]]) -> list[Any]:
    ax.plot(x, fl, color=COLORS[0], label="requests in flight (in the engines)")
    ax.plot(x, waiting, color=COLORS[3], linestyle="--", label="waiting in the scheduler (queue)")
    if not any(v is not None for v in kv):
        return [ax]
    ax2 = _right_axis(ax, "KV cache used, %")
    ax2.plot(x, [100 * v if v is not None else float("nan") for v in kv], color=COLORS[2], linestyle=":",
             label="KV cache used (fullest engine)")
    ax2.set_ylim(0, 100)
    return [ax, ax2]


@_styled
def errors(facts: RunFacts) -> Optional[str]:
    if not facts.errors:
        return None
    fig = _figure(height=0.5 + 0.35 * len(facts.errors))
    ax = fig.add_subplot()
    kinds = [e.kind for e in facts.errors][::-1]
    counts = [e.count for e in facts.errors][::-1]
    bars = ax.barh(kinds, counts, color=COLORS[3])
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("error records (row, task)")
    return _svg(fig)


@_styled
def output_lengths(facts: RunFacts) -> Optional[str]:
    tasks = [t for t in facts.tasks if t.output_lengths]
    if not tasks:
        return None
    fig = _figure(height=3.0)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 1.3])
    hi = max(max(t.output_lengths) for t in tasks)
    bins = min(40, max(hi, 1))
    for i, t in enumerate(tasks):
        ax.hist(t.output_lengths, bins=bins, range=(0, hi + 1), histtype="step", linewidth=1.5,
                color=COLORS[i % len(COLORS)], label=t.name)
    ax.set_xlabel("output tokens per answer")
    ax.set_ylabel("answers")
    ax.legend(frameon=False)
    names = [t.name for t in tasks]
    cut = [100 * t.output_truncated / t.rows if t.rows else 0 for t in tasks]
    bars = ax2.bar(names, cut, color=[COLORS[i % len(COLORS)] for i in range(len(tasks))])
    ax2.bar_label(bars, labels=[f"{c:.0f}%" for c in cut], padding=2)
    ax2.set_ylim(0, 110)
    ax2.set_ylabel("answers cut at max_tokens or empty, %")
    ax2.tick_params(axis="x", labelrotation=20)
    return _svg(fig)


@_styled
def sentiment(facts: RunFacts) -> Optional[str]:
    t = next((t for t in facts.tasks if t.name == "sentiment" and t.labels), None)
    if t is None:
        return None
    labels = sorted(t.labels, key=lambda k: -t.labels[k])
    fig = _figure(width=5.0, height=2.4)
    ax = fig.add_subplot()
    bars = ax.bar(labels, [t.labels[k] for k in labels], color=COLORS[: len(labels)])
    ax.bar_label(bars, padding=2)
    ax.set_ylabel("rows")
    return _svg(fig)


@_styled
def tokens(facts: RunFacts) -> Optional[str]:
    tasks = [t for t in facts.tasks if t.prompt_tokens or t.output_tokens]
    if not tasks:
        return None
    fig = _figure(width=6.0, height=2.6)
    ax = fig.add_subplot()
    xs = range(len(tasks))
    w = 0.38
    b1 = ax.bar([x - w / 2 for x in xs], [t.prompt_tokens for t in tasks], w, color=COLORS[0], label="prompt tokens")
    b2 = ax.bar([x + w / 2 for x in xs], [t.output_tokens for t in tasks], w, color=COLORS[1], label="output tokens")
    ax.bar_label(b1, labels=[f"{t.prompt_tokens:,}" for t in tasks], padding=2, fontsize=8)
    ax.bar_label(b2, labels=[f"{t.output_tokens:,}" for t in tasks], padding=2, fontsize=8)
    ax.set_xticks(list(xs), [t.name for t in tasks])
    ax.set_ylabel("tokens")
    ax.legend(frameon=False)
    return _svg(fig)


def _stacked(ax: Any, slices: list[TimeSlice], y: str) -> None:
    left = 0.0
    for i, s in enumerate(slices):
        ax.barh([y], [s.seconds], left=left, color=COLORS[i % len(COLORS)], label=f"{s.label} {s.seconds:,.1f}s")
        left += s.seconds


@_styled
def wall(facts: RunFacts) -> Optional[str]:
    slices = wall_time(facts.summary)
    if not slices:
        return None
    fig = _figure(height=1.9)
    ax = fig.add_subplot()
    _stacked(ax, slices, "wall time")
    ax.set_xlabel("seconds")
    fig.legend(loc="outside lower center", ncol=4, frameon=False, fontsize=8)
    return _svg(fig)


@_styled
def actor(facts: RunFacts) -> Optional[str]:
    inside = actor_time(facts.summary)
    if not inside:
        return None
    fig = _figure(height=0.6 + 0.4 * len(inside))
    ax = fig.add_subplot()
    bars = ax.barh([s.label for s in inside][::-1], [s.seconds for s in inside][::-1], color=COLORS[5])
    ax.bar_label(bars, labels=[f"{s.seconds:,.1f}s" for s in inside][::-1], padding=3, fontsize=8)
    ax.set_xlabel("seconds, summed over actors and batches in flight")
    return _svg(fig)
