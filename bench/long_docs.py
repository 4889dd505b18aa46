"""Long documents: the measurements behind context policy 'split' (pipeline/tasks/execute.py).

    python -m bench.long_docs sentiment   # which policy for a long text's sentiment (SmolLM2, max_model_len 512)
    python -m bench.long_docs mixed       # short rows' throughput with and without very long documents in the corpus
    python -m bench.long_docs largest     # the largest document: its parts, requests and wall time

Run each under the shared lock (`flock /tmp/pipeline-heavy.lock python -m bench.long_docs ...`):
they start a vLLM engine. Figures print last; `--out FILE` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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


# -- main -------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.long_docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["sentiment", "mixed", "largest"])
    ap.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct in the cache)")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--docs", type=int, default=0, help="sentiment: at most this many documents (0: all)")
    ap.add_argument("--per-doc", type=int, default=4, help="sentiment: reviews per document")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.model = args.model or default_model()
    if args.what == "sentiment":
        res = asyncio.run(_sentiment(args))
        print_sentiment(res)
    else:
        raise SystemExit(f"{args.what}: not yet")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
