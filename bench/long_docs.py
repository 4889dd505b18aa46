"""Long documents: the measurements behind context policy 'split' (pipeline/tasks/execute.py).

    python -m bench.long_docs sentiment   # which policy for a long text's sentiment (SmolLM2, max_model_len 512)
    python -m bench.long_docs mixed       # short rows' throughput with and without very long documents (tiny model)
    python -m bench.long_docs largest --contexts 200   # one document of 200 contexts through `pipeline run`

Run each under the shared lock (`flock /tmp/pipeline-heavy.lock python -m bench.long_docs ...`):
they start a vLLM engine. Figures print last; `--out FILE` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT / "bench" / "data" / "imdb_sample200.jsonl"
XSUM = ROOT / "bench" / "data" / "xsum_sample50.jsonl"


def default_model() -> str:
    return str(Path.home() / ".cache" / "pipeline" / "models" / "SmolLM2-135M-Instruct")


def long_reviews(per_doc: int) -> list[dict[str, Any]]:
    """Long labeled documents: `per_doc` consecutive IMDB reviews of the same label, one
    paragraph each (so every document is several times a 512-token context)."""
    rows = [json.loads(line) for line in IMDB.open(encoding="utf-8")]
    by_label: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        by_label[int(r["label"])].append(r["text"])
    docs = []
    for label, texts in sorted(by_label.items()):
        for k in range(0, len(texts) - per_doc + 1, per_doc):
            docs.append({"text": "\n\n".join(texts[k : k + per_doc]), "label": "positive" if label else "negative"})
    return docs


# -- sentiment --------------------------------------------------------------------------------
async def _sentiment(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.config import EngineConfig, TasksConfig
    from pipeline.engine.engine import Engine
    from pipeline.tasks import build_tasks
    from pipeline.tasks.execute import ExecContext, execute, finish, plan_parts
    from pipeline.tasks.prompting import _encode, prompt_budget, render_text, template_tokens

    docs = long_reviews(args.per_doc)[: args.docs] if args.docs else long_reviews(args.per_doc)
    (task,) = build_tasks(TasksConfig(sentiment={}))
    labels = list(task.cfg.labels)
    cfg = EngineConfig(max_model_len=args.max_model_len, kv_cache_gib=0.5)
    engine = Engine(args.model, cfg).start()
    try:
        tok = engine.tokenizer
        ctx = ExecContext(tok, cfg.max_model_len, "split")
        label_ids = {lab: tok.encode(lab, add_special_tokens=False)[0] for lab in labels}
        probe = task.sampling_params().clone()
        probe.logprobs = 20  # the top 20 raw log-probabilities at the label position
        room = prompt_budget(task, cfg.max_model_len) - template_tokens(task, tok)

        async def ask_text(text: str):
            ids = _encode(render_text(task, text, tok), tok)
            return await engine.agenerate(ids, probe)

        def first_token_probs(gen) -> Optional[dict[str, float]]:
            """The labels' probabilities at the first answer token, renormalized over the labels
            (what a calibrated sentiment task would expose), from the raw top-20."""
            top = gen.completion.top_logprobs[0] if gen.completion.top_logprobs else {}
            lp = {lab: top.get(i) for lab, i in label_ids.items()}
            if all(v is None for v in lp.values()):
                return None
            z = [math.exp(v) for v in lp.values() if v is not None]
            return {lab: (math.exp(v) / sum(z) if v is not None else 0.0) for lab, v in lp.items()}

        def head_tail(text: str, head: float) -> str:
            ids = tok.encode(text, add_special_tokens=False)
            h = int((room - 8) * head)
            t = room - 8 - h
            return tok.decode(ids[:h]) + ("\n\n[...]\n\n" + tok.decode(ids[-t:]) if t > 0 else "")

        async def one(doc: dict[str, Any]) -> dict[str, Any]:
            text = doc["text"]
            out: dict[str, Any] = {"gold": doc["label"]}
            r = await execute(task, text, engine, ExecContext(tok, cfg.max_model_len, "truncate"))
            out["truncate (head)"] = r.columns["label"] if r.ok else None
            for name, h in (("tail", 0.0), ("head and tail", 0.5)):
                g = await ask_text(head_tail(text, h) if h else tok.decode(tok.encode(text, add_special_tokens=False)[-(room - 8):]))
                out[name] = finish(task, g, True).columns["label"]
            plan = plan_parts(task, text, ctx)
            assert not isinstance(plan, list), "a document fits one request: make the documents longer"
            gens = await asyncio.gather(*(engine.agenerate(p.ids, probe) for p in plan.parts))
            answers = [finish(task, g, False).columns for g in gens]
            weights = [float(p.part.tokens) for p in plan.parts]
            out["parts"] = len(plan.parts)
            out["tokens"] = len(tok.encode(text, add_special_tokens=False))
            out["split: mean of part labels (shipped)"] = task.aggregate(answers, weights)["label"]
            out["split: mean of part labels, unweighted"] = task.aggregate(answers, [1.0] * len(answers))["label"]
            probs = [first_token_probs(g) for g in gens]
            if all(p is not None for p in probs):
                mean = {lab: sum(p[lab] * w for p, w in zip(probs, weights)) / sum(weights) for lab in labels}
                out["split: mean of part label probabilities"] = max(labels, key=mean.get)
            else:
                out["split: mean of part label probabilities"] = None
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(d) for d in docs))
        seconds = time.perf_counter() - t0
    finally:
        engine.shutdown()
    policies = [k for k in results[0] if k not in ("gold", "parts", "tokens")]
    table = {}
    for p in policies:
        have = [r for r in results if r[p] is not None]
        table[p] = {
            "accuracy": round(sum(r[p] == r["gold"] for r in have) / max(len(have), 1), 3),
            "answered": len(have),
            "predicted": {lab: sum(r[p] == lab for r in have) for lab in labels},
        }
    return {
        "what": f"{len(docs)} long documents of {args.per_doc} same-label IMDB reviews, SmolLM2-135M-Instruct, "
        f"max_model_len {args.max_model_len}, labels {labels}",
        "docs": len(docs),
        "gold": {lab: sum(r["gold"] == lab for r in results) for lab in labels},
        "mean_parts": round(sum(r["parts"] for r in results) / len(results), 2),
        "mean_tokens": round(sum(r["tokens"] for r in results) / len(results)),
        "seconds": round(seconds, 1),
        "policies": table,
    }


def print_sentiment(res: dict[str, Any]) -> None:
    print(res["what"])
    print(f"gold labels {res['gold']}; {res['mean_tokens']} tokens and {res['mean_parts']} parts per document on average; {res['seconds']} s")
    print(f"{'policy':48} {'accuracy':>8}  predicted")
    for name, row in res["policies"].items():
        print(f"{name:48} {row['accuracy']:>8.3f}  {row['predicted']} ({row['answered']} answered)")


# -- corpora and runs through the CLI ---------------------------------------------------------
def xsum_text(min_tokens: int, tokenizer: Any) -> str:
    """Real news text: XSum articles, one after another (from the start again if needed), as
    paragraphs, until the document holds `min_tokens` tokens of the model's tokenizer."""
    articles = [json.loads(line)["article"] for line in XSUM.open(encoding="utf-8")]
    out, n, k = [], 0, 0
    while n < min_tokens:
        a = articles[k % len(articles)]
        out.append(a)
        n += len(tokenizer.encode(a, add_special_tokens=False)) + 1
        k += 1
    return "\n\n".join(out)


def tiny_model(work: Path) -> str:
    from pipeline.engine.tiny import build_tiny_model

    return str(build_tiny_model(work / "tiny-llama"))


def write_spec(path: Path, inputs: list[Path], out: Path, model: str, tasks: dict, engine: dict, rows_per_unit: int) -> Path:
    import yaml

    spec = {
        "input": {"paths": [str(p) for p in inputs], "id_field": "id"},
        "output": {"path": str(out), "rows_per_unit": rows_per_unit},
        "tasks": tasks,
        "model": {"path": model},
        "engine": engine,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli(spec: Path, out: Path, log: Path) -> dict[str, Any]:
    """`pipeline run spec` in a subprocess. Returns its summary, when its engine was ready,
    and when each output row was committed: read from the parts' commit records
    (`committed_at`), polled while the run goes, since the publish merges small part files
    (their modification times are then the publish's) and clears the staging."""
    import yaml

    cfg = yaml.safe_load(spec.read_text())
    ids: dict[str, list[str]] = {}  # input file -> row id at each position (one record a line)
    for path in cfg["input"]["paths"]:
        ids[str(Path(path).resolve())] = [json.loads(line)["id"] for line in Path(path).open(encoding="utf-8")]
    seen: dict[str, dict[str, Any]] = {}

    def poll() -> None:
        for rec in out.glob("_staging/*/_commits/*.json"):
            if rec.name not in seen:
                try:
                    seen[rec.name] = json.loads(rec.read_text())
                except (OSError, ValueError):  # being written or already cleared: next look
                    pass

    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec)], stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            poll()
            time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed (exit {proc.returncode}); see {log}")
    summary_path = out / "summary.json"
    s = json.loads(summary_path.read_text())
    # summary.json is written as the run ends, wall_seconds after it began.
    ready = summary_path.stat().st_mtime - s["wall_seconds"] + (s.get("startup_seconds") or 0.0)
    committed: list[tuple[float, str]] = []
    for rec in seen.values():
        rows = ids[str(Path(rec["source"]).resolve())]
        committed += [(rec["committed_at"], rows[p]) for a, b in rec["positions"] for p in range(a, b + 1)]
    if len(committed) != s["rows"]:
        raise SystemExit(f"saw commit records for {len(committed)} rows of {s['rows']}: the publish cleared some first")
    return {"summary": s, "ready": ready, "committed": sorted(committed)}


# -- mixed ------------------------------------------------------------------------------------
def _mixed(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="long-mixed-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model if args.model_given else tiny_model(work)
    tok = AutoTokenizer.from_pretrained(model)
    short = work / "short.jsonl"
    with short.open("w") as f:
        for k in range(args.short):
            f.write(json.dumps({"id": f"short-{k}", "text": f"Row {k}: the film was {'great' if k % 3 else 'slow'} and long."}) + "\n")
    long_file = work / "long.jsonl"
    long_tokens = args.contexts * args.max_model_len
    with long_file.open("w") as f:
        for k in range(args.long):
            f.write(json.dumps({"id": f"long-{k}", "text": xsum_text(long_tokens, tok)}) + "\n")
    tasks = {"translation": {"target_lang": "French", "sampling": {"max_tokens": args.max_tokens, "min_tokens": args.max_tokens}}}
    engine = {"max_model_len": args.max_model_len, "batch_rows": args.batch_rows, "kv_cache_gib": 0.5,
              "batches_in_flight": args.batches_in_flight}
    if args.max_parts_in_flight:
        engine["max_parts_in_flight"] = args.max_parts_in_flight
    runs = {}
    for name, inputs in (("short only", [short]), ("short + long", [long_file, short])):
        out = work / name.replace(" ", "").replace("+", "_")
        shutil.rmtree(out, ignore_errors=True)
        spec = write_spec(work / f"{out.name}.yaml", inputs, out, model, tasks, engine, args.rows_per_unit)
        print(f"[long_docs] mixed: {name} ...", flush=True)
        r = run_cli(spec, out, work / f"{out.name}.log")
        s, ready = r["summary"], r["ready"]
        shorts = [t - ready for t, rid in r["committed"] if rid.startswith("short-")]
        longs = [t - ready for t, rid in r["committed"] if rid.startswith("long-")]
        runs[name] = {
            "wall_seconds": s["wall_seconds"],
            "startup_seconds": s.get("startup_seconds"),
            "short_rows": len(shorts),
            "short_half_done_s": round(shorts[len(shorts) // 2], 2),
            "short_done_s": round(shorts[-1], 2),
            "short_rows_per_s": round(len(shorts) / shorts[-1], 2),
            "long_done_s": [round(t, 2) for t in longs] or None,
            "output_tokens": s["output_tokens"],
            "output_tokens_per_s_after_startup": s.get("output_tokens_per_second_after_startup"),
        }
        if longs:
            import pyarrow.dataset as pads

            t = pads.dataset(str(out / "translation")).to_table(columns=["row_id", "parts"]).to_pylist()
            runs[name]["long_doc_parts"] = sorted(x["parts"] for x in t if x["row_id"].startswith("long-"))
    a, b = runs["short only"], runs["short + long"]
    return {
        "what": f"translation, {args.short} one-line rows, plus {args.long} documents of {args.contexts} x max_model_len "
        f"{args.max_model_len} tokens; {args.max_tokens} output tokens per request; model {Path(model).name}; "
        f"batch_rows {args.batch_rows}, batches_in_flight {args.batches_in_flight}, "
        f"max_parts_in_flight {args.max_parts_in_flight or 'default'}",
        "runs": runs,
        "short_throughput_ratio": round(b["short_rows_per_s"] / a["short_rows_per_s"], 3),
        "work": str(work),
    }


def print_mixed(res: dict[str, Any]) -> None:
    print(res["what"])
    print("seconds after the engine was ready:")
    print(f"{'run':14} {'wall s':>7} {'short rows':>10} {'half done':>9} {'all done':>8} {'rows/s':>7} {'out tok/s':>9}  long documents done")
    for name, r in res["runs"].items():
        print(f"{name:14} {r['wall_seconds']:>7.1f} {r['short_rows']:>10} {r['short_half_done_s']:>9.1f} {r['short_done_s']:>8.1f} "
              f"{r['short_rows_per_s']:>7.1f} {r['output_tokens_per_s_after_startup'] or 0:>9.0f}  {r['long_done_s'] or '-'}")
    print(f"long documents' parts: {res['runs']['short + long'].get('long_doc_parts')}")
    print(f"short rows' throughput with the long documents / without: {res['short_throughput_ratio']:.3f}")


# -- largest ----------------------------------------------------------------------------------
def _largest(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="long-largest-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model if args.model_given else tiny_model(work)
    tok = AutoTokenizer.from_pretrained(model)
    text = xsum_text(args.contexts * args.max_model_len, tok)
    doc = work / "largest.jsonl"
    doc.write_text(json.dumps({"id": "largest", "text": text}) + "\n")
    n_tokens = len(tok.encode(text, add_special_tokens=False))
    tasks = {t: {} for t in args.tasks.split(",")}
    if "translation" in tasks:
        tasks["translation"] = {"target_lang": "French", "sampling": {"max_tokens": args.max_tokens}}
    if "summarization" in tasks:
        tasks["summarization"] = {"max_words": 30}
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    spec = write_spec(work / "largest.yaml", [doc], out, model, tasks,
                      {"max_model_len": args.max_model_len, "kv_cache_gib": 0.5}, 1)
    print(f"[long_docs] largest: {len(text):,} characters, {n_tokens:,} tokens ...", flush=True)
    r = run_cli(spec, out, work / "largest.log")
    s = r["summary"]
    import pyarrow.dataset as pads

    rows = {}
    for t in tasks:
        cols = ["parts", "prompt_tokens", "output_tokens", "output_truncated"] + (["depth"] if t == "summarization" else [])
        (row,) = pads.dataset(str(out / t)).to_table(columns=cols).to_pylist()
        rows[t] = row
    return {
        "what": f"one document of {len(text):,} characters = {n_tokens:,} tokens ({n_tokens / args.max_model_len:.0f} x "
        f"max_model_len {args.max_model_len}); model {Path(model).name}; tasks {', '.join(tasks)}",
        "characters": len(text), "tokens": n_tokens, "wall_seconds": s["wall_seconds"],
        "startup_seconds": s.get("startup_seconds"), "steady_seconds": s.get("steady_seconds"),
        "rows": rows, "work": str(work),
    }


def print_largest(res: dict[str, Any]) -> None:
    print(res["what"])
    print(f"wall {res['wall_seconds']:.1f} s (engine start-up {res['startup_seconds']:.1f} s, then {res['steady_seconds']:.1f} s)")
    for t, row in res["rows"].items():
        print(f"  {t}: {row}")


# -- main -------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.long_docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["sentiment", "mixed", "largest"])
    ap.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct in the cache)")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--docs", type=int, default=0, help="sentiment: at most this many documents (0: all)")
    ap.add_argument("--per-doc", type=int, default=4, help="sentiment: reviews per document")
    ap.add_argument("--short", type=int, default=3000, help="mixed: one-line rows")
    ap.add_argument("--long", type=int, default=4, help="mixed: long documents")
    ap.add_argument("--contexts", type=int, default=20, help="mixed, largest: a long document's length in max_model_len")
    ap.add_argument("--max-tokens", type=int, default=48, help="mixed, largest: translation tokens per request")
    ap.add_argument("--batch-rows", type=int, default=256, help="mixed: engine.batch_rows")
    ap.add_argument("--batches-in-flight", type=int, default=2, help="mixed: engine.batches_in_flight")
    ap.add_argument("--max-parts-in-flight", type=int, default=None, help="mixed: engine.max_parts_in_flight (default: the engine's)")
    ap.add_argument("--rows-per-unit", type=int, default=250, help="mixed: output.rows_per_unit")
    ap.add_argument("--tasks", default="translation,summarization", help="largest: tasks")
    ap.add_argument("--work", help="mixed, largest: working folder (default: a new temporary one)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    # sentiment measures the real default model; mixed and largest default to the tiny one
    args.model_given = args.model is not None
    args.model = args.model or default_model()
    if args.what == "sentiment":
        res = asyncio.run(_sentiment(args))
        print_sentiment(res)
    elif args.what == "mixed":
        res = _mixed(args)
        print_mixed(res)
    else:
        res = _largest(args)
        print_largest(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
