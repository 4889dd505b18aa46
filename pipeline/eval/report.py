"""Plain aligned text tables from evaluation results (the JSON dicts), for the CLI to print."""

from __future__ import annotations

from typing import Any, Optional

from pipeline.eval.metrics import ROUGE_TYPES, SEQ_REP_N

_SCORE_100 = frozenset({*ROUGE_TYPES, "chrf", "bleu"})
_SHARES = ("truncated", "empty", "repetitive")


def fmt(metric: str, v: Optional[float], signed: bool = False) -> str:
    if v is None:
        return "-"
    sign = "+" if signed else ""
    return f"{v:{sign}.1f}" if metric in _SCORE_100 else f"{v:{sign}.3f}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: indent + "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    ).rstrip()
    return [line(header), indent + "  ".join("-" * w for w in widths), *map(line, rows)]


def _quality_rows(q: dict[str, Any]) -> list[list[str]]:
    n = q.get("outputs", 0)
    rows = []
    for k in _SHARES:
        if k in q:
            share = q.get(f"{k}_share")
            of = q.get("repetition_checked", n) if k == "repetitive" else n
            rows.append([f"{k} (share of outputs)", f"{share:.3f}" if share is not None else "-", f"{q[k]} of {of}"])
    rep = q.get(f"seq_rep_{SEQ_REP_N}")
    if rep is not None:
        rows.append([f"seq-rep-{SEQ_REP_N} (mean)", f"{rep:.3f}", ""])
    return rows


def task_lines(task: str, t: dict[str, Any]) -> list[str]:
    out = [f"{task}: {t['rows']} rows graded against '{t['reference_field']}', {t['failed']} failed"]
    rows = [[m, fmt(m, v), ""] for m, v in t["metrics"].items()]
    if "lead_baseline" in t:
        for m, v in t["lead_baseline"].items():
            rows.append([f"{m} lead-sentence baseline", fmt(m, v), ""])
        if t.get("rougeL_vs_lead") is not None:
            rows.append(["rougeL / lead rougeL", f"{t['rougeL_vs_lead']:.2f}x", ""])
    rows += _quality_rows(t["quality"])
    out += _table(["metric", "value", ""], rows)
    if "confusion" in t:
        c = t["confusion"]
        out.append("  confusion (rows: gold, columns: predicted)")
        out += _table(["", *c["predicted"]], [[g, *map(str, r)] for g, r in zip(c["gold"], c["matrix"])], indent="    ")
    return out


def eval_text(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, v in result["variants"].items():
        run = v.get("run", {})
        lines.append(f"{name.upper()}: {v['spec']}  model {v.get('model')}  rows {v['sample']['rows']}"
                     f"  run {run.get('run_id', '?')} ({run.get('status', '?')}, {run.get('wall_seconds', '?')}s)")
        for task, t in v["tasks"].items():
            lines += ["  " + x for x in task_lines(task, t)]
        lines.append("")
    cmp = result.get("comparison")
    if cmp:
        lines.append(f"comparison: B - A, paired bootstrap ({cmp['resamples']} resamples, seed {cmp['seed']}), 95% interval")
        lines.append(f"  A = {cmp['a']}\n  B = {cmp['b']}")
        rows = []
        for task, t in cmp["tasks"].items():
            for m, d in t["metrics"].items():
                ci = f"[{fmt(m, d['ci_low'], True)}, {fmt(m, d['ci_high'], True)}]" if d["ci_low"] is not None else "-"
                verdict = f"yes, {d['better'].upper()} better" if d["significant"] else "no"
                rows.append([f"{task} ({t['rows']} rows)", m, fmt(m, d["a"]), fmt(m, d["b"]),
                             fmt(m, d["diff"], True), ci, verdict])
        lines += _table(["task", "metric", "A", "B", "B - A", "95% CI", "significant"], rows)
    return "\n".join(lines).rstrip() + "\n"


def summary_lines(ev: Optional[dict[str, Any]]) -> list[str]:
    """Lines for the printed run summary (`evaluation` section of summary.json)."""
    if not ev:
        return []
    out = []
    for task, q in sorted(ev.get("quality", {}).items()):
        n = q.get("outputs", 0)
        if not n:
            continue
        parts = [f"cut at max_tokens {q['truncated']} ({q['truncated_share']:.1%})", f"empty {q['empty']}"]
        if "repetitive" in q and q.get("repetitive_share") is not None:
            checked = q.get("repetition_checked", n)
            sample = f" of {checked:,} checked" if checked != n else ""
            parts.append(f"repeating itself {q['repetitive']}{sample} ({q['repetitive_share']:.1%})")
        out.append(f"  quality {task:<14} of {n:,} outputs: " + ", ".join(parts))
    for task, t in sorted(ev.get("metrics", {}).items()):
        figs = ", ".join(f"{m} {fmt(m, v)}" for m, v in t["metrics"].items())
        extra = ""
        if t.get("lead_baseline"):
            extra = f" (lead-sentence baseline rougeL {fmt('rougeL', t['lead_baseline'].get('rougeL'))})"
        out.append(f"  metrics {task:<14} vs '{t['reference_field']}' ({t['rows']} rows, {t['failed']} failed): {figs}{extra}")
    if ev.get("error"):
        out.append(f"  evaluation failed: {ev['error']}")
    return out
