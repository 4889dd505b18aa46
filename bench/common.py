"""The workload folder every system reads, and the result every system writes.

A workload folder holds:
  workload.json   what to run: model path, engine settings, sampling, task
  corpus.jsonl    {"id", "text"}: the documents (our pipeline reads this, end to end)
  prompts.jsonl   {"id", "prompt_token_ids"}: the exact prompts our pipeline renders for
                  those documents (peers get these, so every system runs the same prompts)

A system module `bench.systems.<name>` has `run(workload_dir) -> dict` with at least the
keys of `Result`; `python -m bench.systems.<name> WORKLOAD_DIR RESULT_JSON` runs it in a
fresh process (the orchestrator samples that process tree's memory from outside).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

# Set when the interpreter started, before heavy imports: "wall" includes those imports.
PROCESS_T0 = time.perf_counter()


@dataclass
class Workload:
    name: str
    model: str  # local model folder
    task: str  # our task that renders the prompts ("summarization")
    sampling: dict[str, Any]  # vLLM SamplingParams kwargs: temperature, max_tokens, min_tokens, ...
    engine: dict[str, Any]  # our EngineConfig fields (dtype, max_model_len, max_num_seqs, kv_cache_gib, ...)
    rows: int
    prompt: Optional[dict[str, str]] = None  # the task's prompt override ({"system": ..., "user": ...})
    dir: Path = field(default=Path("."), repr=False)

    @classmethod
    def load(cls, folder: str | Path) -> "Workload":
        folder = Path(folder)
        data = json.loads((folder / "workload.json").read_text())
        return cls(**data, dir=folder)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "dir"}
        (self.dir / "workload.json").write_text(json.dumps(data, indent=2))

    @property
    def corpus_path(self) -> Path:
        return self.dir / "corpus.jsonl"

    @property
    def prompts_path(self) -> Path:
        return self.dir / "prompts.jsonl"

    def prompts(self) -> list[list[int]]:
        with open(self.prompts_path) as f:
            return [json.loads(line)["prompt_token_ids"] for line in f]

    def engine_config(self):
        from pipeline.config import EngineConfig

        return EngineConfig(**self.engine)

    def vllm_engine_kwargs(self) -> dict[str, Any]:
        """The exact `vllm.LLM(**kwargs)` our pipeline's engine uses (device: CPU here)."""
        from pipeline.engine.engine import Engine, resolve_device

        cfg = self.engine_config()
        return Engine(self.model, cfg).engine_kwargs(resolve_device(cfg))

    def task_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"sampling": self.sampling}
        if self.prompt:
            cfg["prompt"] = self.prompt
        return {self.task: cfg}

    @property
    def fixed_length(self) -> bool:
        s = self.sampling
        return bool(s.get("ignore_eos")) or (s.get("min_tokens") or 0) >= s["max_tokens"]


@dataclass
class Result:
    system: str
    rows: int
    prompt_tokens: int
    output_tokens: int  # generated tokens, EOS included where the row stopped on it
    startup_seconds: float  # loading the engine / model (and the cluster, where there is one)
    run_seconds: float  # start-up excluded: first request submitted -> last result in hand
    wall_seconds: float  # whole process, imports and start-up included
    detail: dict[str, Any] = field(default_factory=dict)
    note: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def main_for(run) -> None:
    """`python -m bench.systems.X WORKLOAD_DIR RESULT_JSON [OPTIONS_JSON]` (options: keyword
    arguments of `run`, for the systems that take any)."""
    import sys

    workload_dir, out = sys.argv[1], sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    result = run(Workload.load(workload_dir), **options)
    if isinstance(result, Result):
        result = result.to_dict()
    if not result.get("wall_seconds"):
        result["wall_seconds"] = time.perf_counter() - PROCESS_T0
    Path(out).write_text(json.dumps(result, indent=2))
