"""Housekeeping for long-lived outputs (a nightly job writing into one folder for years).

`collect_garbage` deletes what no reader can need any more, once it is older than the
output's retention (`output.retention_hours`):

- data files that no version published within the retention lists: files of replaced
  versions (as Delta Lake's VACUUM: a reader that opened the previous version keeps
  working for the retention), and files left in dataset folders by a publish that never
  switched (a crash, a writer that lost the race);
- staging folders of other runs, idle for longer than the retention (a killed run can be
  resumed within the retention; after it, its rerun computes again);
- temp files of interrupted atomic writes;
- manifest versions superseded before the retention (the latest always stays).

Runs call it after each publish; `pipeline gc OUT` runs it on demand. Both hold the
output's writer lease, so no publish of another writer is in flight meanwhile; files
younger than the retention are never touched anyway (a zombie writer's fresh files).
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Optional

from pipeline.io.manifest import LOG, read_manifest, version_rel
from pipeline.io.store import TMP_MARK, Store

logger = logging.getLogger(__name__)

STAGING = "_staging"


@dataclass
class GcReport:
    data_files: list[str] = field(default_factory=list)
    staging_dirs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    bytes: int = 0

    def line(self) -> str:
        return (f"{len(self.data_files)} data files of earlier versions, {len(self.staging_dirs)} abandoned staging "
                f"folders, {len(self.temp_files)} temp files, {len(self.versions)} old manifest versions "
                f"({self.bytes / 1e6:,.1f} MB)")


def collect_garbage(store: Store, retention_s: float, keep_run: Optional[str] = None,
                    now: Optional[float] = None, dry_run: bool = False) -> GcReport:
    now = time.time() if now is None else now
    cutoff = now - retention_s
    report = GcReport()
    manifest = read_manifest(store)
    live: set[str] = set()
    if manifest is not None:
        live = manifest.files() | {f for f, t in manifest.retired.items() if t >= cutoff}

    def drop(rel: str, size: int, kind: list) -> None:
        kind.append(rel)
        report.bytes += size
        if not dry_run:
            store.delete(rel)

    for run in store.list_dirs(STAGING):
        if run == keep_run:
            continue
        infos = list(store.list_info(f"{STAGING}/{run}"))
        newest = max((i.mtime for i in infos), default=0.0)
        if newest < cutoff:
            report.staging_dirs.append(run)
            report.bytes += sum(i.size for i in infos)
            if not dry_run:
                store.delete_dir(f"{STAGING}/{run}")

    for info in store.list_info("", recursive=False):  # temp files of the pointer, lease, summary
        if TMP_MARK in info.rel and info.mtime < cutoff:
            drop(info.rel, info.size, report.temp_files)
    for top in store.list_dirs(""):
        if top == STAGING:
            continue
        data = not top.startswith("_")
        for info in store.list_info(top):
            if info.mtime >= cutoff:
                continue
            if TMP_MARK in posixpath.basename(info.rel):
                drop(info.rel, info.size, report.temp_files)
            elif data and info.rel.endswith(".parquet") and info.rel not in live:
                drop(info.rel, info.size, report.data_files)

    if manifest is not None:
        published = {}
        for info in store.list_info(LOG):
            stem = posixpath.basename(info.rel).removesuffix(".json")
            if stem.isdigit():
                published[int(stem)] = info.mtime
        for v in sorted(published):
            succ = published.get(v + 1)
            if v < manifest.version and succ is not None and succ < cutoff:
                report.versions.append(v)
                if not dry_run:
                    store.delete(version_rel(v))
    if report.data_files or report.staging_dirs or report.temp_files or report.versions:
        logger.info("housekeeping of %s: %s%s", store.root_uri, report.line(), " (dry run)" if dry_run else " removed")
    return report
