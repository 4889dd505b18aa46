"""Planning a run: the model and inputs it covers, its id, and what earlier attempts committed.

The run id is a hash of everything that changes results (model, prompts, sampling, reader
options: `JobSpec.result_fingerprint`) and of the input files' fingerprints, so the same
command after a crash finds the same staging folder and resumes, and any change gives a
new run that replaces the published output only once complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, Optional

from pipeline.config import JobSpec
from pipeline.errors import PipelineError
from pipeline.io.commit import RunCommitter, read_manifest
from pipeline.io.coverage import full_units
from pipeline.io.records import Manifest, PartRecord
from pipeline.io.store import Store

logger = logging.getLogger(__name__)


class RunError(PipelineError):
    """The run failed; nothing partial was published. The message says what to do."""


@dataclasses.dataclass
class RunPlan:
    spec: JobSpec
    model_path: str
    config_fp: str
    run_id: str
    sources: list  # list[SourceFile]
    append: bool
    store: Store
    # The configuration without the settings that only decide whether a text fits the
    # context: a retry-errors run must match the published output on this one.
    compat_fp: str = ""

    @property
    def committer(self) -> RunCommitter:
        return RunCommitter(self.store, self.run_id, target_bytes=int(self.spec.output.target_file_mib * (1 << 20)))

    @property
    def ledger_rel(self) -> str:
        return f"_runs/{self.run_id}.json"


def make_plan(spec: JobSpec, force: bool = False) -> RunPlan:
    from pipeline.engine.limits import resolve_max_model_len
    from pipeline.engine.models import model_fingerprint, resolve_model
    from pipeline.io.sources import list_sources

    model_path = resolve_model(spec.model.path)
    # The model's own context limit by default, and an explicit value checked against it
    # and the KV cache: here, before Ray starts, with the field and the limit named.
    max_len = resolve_max_model_len(spec.engine, model_path)
    if max_len != spec.engine.max_model_len:
        spec = spec.model_copy(update={"engine": spec.engine.model_copy(update={"max_model_len": max_len})})
    model_id = model_fingerprint(model_path)
    env = result_environment(spec)
    config_fp = spec.result_fingerprint(model_id, env)
    sources = list_sources(spec.input)
    store = Store(spec.output.path)
    manifest = read_manifest(store)
    append = False
    if spec.incremental:
        if manifest and manifest.config not in (None, config_fp):
            raise RunError(
                f"{spec.output.path} holds results of another configuration (model, prompts or sampling "
                "changed); an incremental run would mix them. Use a new output folder, or run without "
                "--incremental to recompute everything into this one."
            )
        done = committed_inputs(manifest, config_fp)
        before = len(sources)
        sources = [s for s in sources if (s.uri, s.fingerprint) not in done]
        logger.info("incremental: %d of %d input files are new or changed", len(sources), before)
        append = manifest is not None
    h = hashlib.sha256(config_fp.encode())
    h.update(str(spec.output.rows_per_unit).encode())
    for s in sources:
        h.update(f"\n{s.uri}\t{s.fingerprint}".encode())
    if force:
        h.update(f"\nforce {time.time_ns()}".encode())
    run_id = h.hexdigest()[:12]
    return RunPlan(spec, str(model_path), config_fp, run_id, sources, append, store,
                   spec.result_fingerprint(model_id, env, admission=False))


def result_environment(spec: JobSpec) -> dict[str, Any]:
    """What outside the spec changes results, for the run id: the pipeline's own version and
    task definitions (default prompts, parsers), the engine and tokenizer libraries'
    versions, and the dtype the engine will really use."""
    import importlib.metadata

    import pipeline
    from pipeline.engine.engine import cpu_has_native_bf16, installed_build, resolve_dtype
    from pipeline.tasks import TASKS

    build, vllm_version = installed_build()
    device = spec.engine.device if spec.engine.device != "auto" else (build or "cpu")
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = None
    return {
        "pipeline": pipeline.__version__,
        "tasks": {name: cls.definition() for name, cls in TASKS.items() if name in spec.tasks.enabled()},
        "vllm": f"{build}-{vllm_version}",
        "transformers": transformers_version,
        "dtype": resolve_dtype(spec.engine, device),
        # 'auto' on the CPU follows this flag; on a cluster the workers' CPUs decide, and a
        # mixed cluster would compute in two dtypes: the driver's view is the best available.
        "native_bf16": cpu_has_native_bf16() if device == "cpu" else None,
    }


def committed_inputs(manifest: Optional[Manifest], config_fp: str) -> set[tuple[str, str]]:
    """(uri, fingerprint) of every input file the published version holds, if it holds
    results of this configuration."""
    if not manifest or manifest.config not in (None, config_fp):
        return set()
    return {(uri, e.fingerprint) for uri, e in manifest.sources.items()}


def resume_state(parts: list[PartRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per source uri, per unit: whether it is fully committed and which positions are."""
    return full_units(parts)
