"""`pipeline export`: a published output written again in another file format.

    pipeline export OUT --format openai-batch [--to DIR]

openai-batch: the chat task's answers as OpenAI's Batch API gives them back, keyed by
custom_id, one line per request line, in input order (file, then line):

    OUT/openai/results.jsonl    one line per answered request (response.status_code 200)
    OUT/openai/errors.jsonl     one line per request with an error record (status 400 or 500)
    OUT/openai/_export.json     which published version they were written from

They are read from the published version through the manifest, so a publish running at
the same moment is never half seen, and every request is there exactly once because the
published version holds every input row exactly once (results + errors = request lines;
a read_error record, which stands for the rest of a file it could not read, is one line).
Each file is written whole or not at all; `_export.json` goes last, so an export killed
half way is simply done again. `pipeline run` and `pipeline retry-errors` export on their
own after publishing a job whose input is `openai_batch` (an export after the publish:
the commit protocol is left as it is).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Optional

import pyarrow.compute as pc

from pipeline.errors import PipelineError
from pipeline.io.commit import ERRORS
from pipeline.io.manifest import read_dataset, read_manifest
from pipeline.io.records import Manifest
from pipeline.io.store import Store

logger = logging.getLogger(__name__)

FORMATS = ("openai-batch",)
OPENAI_FOLDER = "openai"
CHAT = "chat"
MARKER = "_export.json"


class ExportError(PipelineError):
    """Nothing to export (no published output, no chat results)."""


@dataclass(frozen=True)
class ExportSummary:
    folder: str  # where the files are (local path or URI)
    results: int  # lines in results.jsonl
    errors: int  # lines in errors.jsonl
    version: int  # the manifest version they come from
    written: bool  # False: they were already up to date


def export_openai_batch(output: str, to: Optional[str] = None, force: bool = False) -> ExportSummary:
    """Write results.jsonl and errors.jsonl for the published version of `output` into `to`
    (default OUT/openai/); nothing when they already reflect that version (unless `force`)."""
    from pipeline.io.formats.openai_batch import error_line, result_line

    store = Store(output)
    manifest = read_manifest(store)
    if manifest is None:
        raise ExportError(f"{output} has no published output to export (run the job first)")
    if not _is_chat_output(store, manifest):
        raise ExportError(f"{output} holds no chat task output: --format openai-batch exports the chat task's answers")
    target = Store(to or store.uri(OPENAI_FOLDER))
    stamp = {"output": store.root_uri, "version": manifest.version, "published_at": manifest.published_at}
    done = target.read_json(MARKER)
    if done and not force and all(done.get(k) == v for k, v in stamp.items()):
        return ExportSummary(target.root_uri, done["results"], done["errors"], manifest.version, False)

    order = [("source", "ascending"), ("position", "ascending")]
    results = read_dataset(output, CHAT).sort_by(order)
    errors = read_dataset(output, ERRORS)
    errors = errors.filter(pc.equal(errors["task"], CHAT)).sort_by(order)
    target.write_bytes("results.jsonl", _jsonl(result_line(r) for r in results.to_pylist()))
    target.write_bytes("errors.jsonl", _jsonl(error_line(r) for r in errors.to_pylist()))
    target.write_json(MARKER, {**stamp, "results": results.num_rows, "errors": errors.num_rows})
    logger.info("exported version %s of %s: %d results, %d errors into %s", manifest.version, output,
                results.num_rows, errors.num_rows, target.root_uri)
    return ExportSummary(target.root_uri, results.num_rows, errors.num_rows, manifest.version, True)


def _is_chat_output(store: Store, manifest: Manifest) -> bool:
    """The published runs include the chat task (a chat job whose every line failed has no
    chat dataset, only error records: the runs' ledgers say which tasks they ran)."""
    if CHAT in manifest.datasets:
        return True
    for run_id in manifest.runs:
        if CHAT in (store.read_json(f"_runs/{run_id}.json") or {}).get("tasks", []):
            return True
    return False


def _jsonl(lines) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
