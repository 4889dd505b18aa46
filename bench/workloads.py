"""Build the benchmark's workload folders (see bench/common.py for the format).

Prompts are rendered by our own task code (`pipeline.tasks`, chat template included), so
the peers get exactly the token ids our pipeline feeds its engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from bench.common import Workload

DATA = Path(__file__).parent / "data"


def documents() -> list[tuple[str, str]]:
    """(id, text) of the 250 bundled documents: 200 IMDB reviews, 50 XSum articles."""
    docs = []
    with open(DATA / "imdb_sample200.jsonl") as f:
        for line in f:
            r = json.loads(line)
            docs.append((r["id"], r["text"].replace("<br />", " ")))
    with open(DATA / "xsum_sample50.jsonl") as f:
        for line in f:
            r = json.loads(line)
            docs.append((f"xsum-{r['id']}", r["article"]))
    return docs


def corpus(rows: int, words: int) -> list[dict[str, str]]:
    """`rows` distinct texts of at most `words` words each; copy k of a document is its words
    rotated by 7k, so repeated documents never make whole-prompt cache hits."""
    docs = documents()
    out = []
    for i in range(rows):
        doc_id, text = docs[i % len(docs)]
        w = text.split()
        k = i // len(docs)
        if k:
            r = (7 * k) % len(w)
            w = w[r:] + w[:r]
        out.append({"id": f"{doc_id}#{k}", "text": " ".join(w[:words])})
    return out


def build(
    folder: str | Path,
    name: str,
    model: str | Path,
    rows: int,
    words: int,
    sampling: dict[str, Any],
    engine: Optional[dict[str, Any]] = None,
    task: str = "summarization",
    prompt: Optional[dict[str, str]] = None,
) -> Workload:
    """Write workload.json, corpus.jsonl and prompts.jsonl into `folder`."""
    from transformers import AutoTokenizer

    from pipeline.config import TasksConfig
    from pipeline.tasks import build_tasks
    from pipeline.tasks.prompting import render_tokens

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    engine = {"max_model_len": 2048, "max_num_seqs": 256, "kv_cache_gib": 1.0, **(engine or {})}
    wl = Workload(name=name, model=str(Path(model).absolute()), task=task, sampling=dict(sampling),
                  engine=engine, rows=rows, prompt=prompt, dir=folder)
    (t,) = build_tasks(TasksConfig(**wl.task_config()))
    tok = AutoTokenizer.from_pretrained(wl.model)
    cfg = wl.engine_config()
    docs = corpus(rows, words)
    with open(wl.corpus_path, "w") as c, open(wl.prompts_path, "w") as p:
        for d in docs:
            ids, _ = render_tokens(t, d["text"], tok, cfg.max_model_len, cfg.context_policy or "truncate")
            c.write(json.dumps(d) + "\n")
            p.write(json.dumps({"id": d["id"], "prompt_token_ids": ids}) + "\n")
    wl.save()
    return wl
