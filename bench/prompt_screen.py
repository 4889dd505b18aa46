"""`python -m bench.prompt_screen`: task prompt variants on one engine, over the eval sets.

    python -m bench.prompt_screen summaries bench/prompts/summaries-2026-11-23.json
    python -m bench.prompt_screen translations bench/prompts/translations-2026-11-23.json

A variants file maps a name to a `tasks:` section (one task). Every variant runs through
the task layer's own `execute` on one engine of the default model (no Ray, no Parquet), on
the rows `pipeline eval` uses (data/eval/xsum_sample50.jsonl, data/eval/en_fr_short.jsonl),
scored with `pipeline.eval.metrics`. A screen, faster than one `pipeline eval --compare`
per variant; a variant worth keeping is then checked with `pipeline eval --compare`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "summaries": (ROOT / "data" / "eval" / "xsum_sample50.jsonl", "article", "summary"),
    "translations": (ROOT / "data" / "eval" / "en_fr_short.jsonl", "text", "fr"),
}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prompt_screen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", choices=sorted(SETS))
    ap.add_argument("variants", help="JSON file: {name: tasks section}")
    ap.add_argument("--model", default=None, help="model folder (default: the default model)")
    args = ap.parse_args(argv)

    import numpy as np

    from pipeline.config import EngineConfig, TasksConfig
    from pipeline.engine.engine import Engine
    from pipeline.eval.metrics import RougeScorer, TranslationScorer, lead_sentence, repeats_itself
    from pipeline.engine.models import resolve_model
    from pipeline.tasks import build_tasks
    from pipeline.tasks.execute import ExecContext, execute

    path, text_field, ref_field = SETS[args.set]
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    texts, refs = [r[text_field] for r in rows], [r[ref_field] for r in rows]
    every = np.arange(len(rows))
    variants = json.loads(Path(args.variants).read_text())
    engine = Engine(str(resolve_model(args.model)), EngineConfig(max_model_len=2048, kv_cache_gib=1.0)).start()
    try:
        ctx = ExecContext.for_engine(engine.tokenizer, engine.cfg, engine.max_model_len)
        lead = None
        if args.set == "summaries":
            lead = RougeScorer.score([lead_sentence(t) for t in texts], refs).aggregate(every)["rougeL"]
            print(f"lead baseline: ROUGE-L {lead:.2f}")
        for name, section in variants.items():
            (task,) = build_tasks(TasksConfig.model_validate(section))

            async def run(task=task):
                return await asyncio.gather(*[execute(task, t, engine, ctx) for t in texts])

            results = asyncio.run(run())
            outs = [r.columns["output_text"] if r.ok else "" for r in results]
            cut = sum(1 for r in results if r.ok and r.columns.get("finish_reason") == "length")
            rep = sum(repeats_itself(o) for o in outs)
            words = float(np.mean([len(o.split()) for o in outs]))
            if lead is not None:
                s = RougeScorer.score(outs, refs).aggregate(every)
                score = f"ROUGE-L {s['rougeL']:.2f} ({s['rougeL'] / lead:.2f}x lead), ROUGE-1 {s['rouge1']:.1f}"
            else:
                s = TranslationScorer.score(outs, refs).aggregate(every)
                score = f"chrF {s['chrf']:.2f}, BLEU {s['bleu']:.2f}"
            print(f"{name}: {score}; cut {cut}/{len(rows)}, repeating {rep}/{len(rows)}, {words:.1f} words", flush=True)
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
