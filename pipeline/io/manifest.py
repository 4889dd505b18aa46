"""Published versions of an output: a log of manifests, switched by compare-and-swap.

    OUT/_manifest/00000042.json   version 42, created once and never rewritten
    OUT/_manifest.json            a copy of the latest version: the readers' fast path

As in Delta Lake's `_delta_log`, the log is the truth: version v+1 exists once a writer
*created* it, with create-if-absent (a hard link locally, `If-None-Match: *` on S3), so of
two writers that both planned on version v exactly one wins and the other learns it lost
(and rebases its plan on the winner's version, or fails). The pointer is written after
the switch; a writer killed in between leaves it one version behind, which `read_manifest`
corrects by probing for the next version (one request), and the next writer rewrites it.
"""

from __future__ import annotations

import logging
from typing import Optional

import pyarrow as pa

from pipeline.io.records import Manifest
from pipeline.io.store import Store

logger = logging.getLogger(__name__)

POINTER = "_manifest.json"
LOG = "_manifest"


def version_rel(version: int) -> str:
    return f"{LOG}/{version:08d}.json"


def read_manifest(store: Store) -> Optional[Manifest]:
    """The latest published version, or None if nothing was ever published."""
    raw = store.read_json(POINTER)
    m = Manifest.model_validate(raw) if raw else None
    v = m.version if m else 0
    while True:  # the pointer may lag the log (a writer killed between the two writes)
        nxt = store.read_json(version_rel(v + 1))
        if nxt is None:
            return m
        m = Manifest.model_validate(nxt)
        v = m.version


def read_version(store: Store, version: int) -> Optional[Manifest]:
    raw = store.read_json(version_rel(version))
    return Manifest.model_validate(raw) if raw else None


def versions(store: Store) -> list[int]:
    out = []
    for rel in store.list(LOG, suffix=".json"):
        stem = rel.rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def switch(store: Store, manifest: Manifest) -> bool:
    """Make `manifest` the published version if its version number is still free. False:
    another writer published that version first (the caller rebases or gives up)."""
    from pipeline.io.commit import fault_point

    fault_point("publish-switch")
    if not store.create_json(version_rel(manifest.version), manifest):
        existing = read_version(store, manifest.version)
        if existing is None or existing.plan_id != manifest.plan_id:
            return False
        # our own switch, done before a crash: finish it
    fault_point("publish-pointer")
    write_pointer(store, manifest)
    return True


def write_pointer(store: Store, manifest: Manifest) -> None:
    cur = store.read_json(POINTER)
    if cur and cur.get("version", 0) > manifest.version:
        return  # never move the pointer back
    store.write_json(POINTER, manifest)


def read_dataset(output: str, dataset: str, version: Optional[int] = None) -> pa.Table:
    """One dataset of the published version (or of an earlier `version`, readable until its
    files pass the output's retention), as pyarrow sees it through the manifest."""
    import pyarrow.dataset as pads

    store = Store(output)
    manifest = read_manifest(store) if version is None else read_version(store, version)
    if manifest is None:
        raise FileNotFoundError(f"{output} has no published output ({POINTER} missing)")
    files = [store.path(f) for f in manifest.datasets.get(dataset, [])]
    if not files:
        from pipeline.io.commit import ERROR_SCHEMA, ERRORS
        from pipeline.tasks import REGISTRY

        if dataset == ERRORS:
            return ERROR_SCHEMA.empty_table()
        return REGISTRY[dataset].schema().empty_table() if dataset in REGISTRY else pa.table({})
    return pads.dataset(files, filesystem=store.fs, format="parquet").to_table()
