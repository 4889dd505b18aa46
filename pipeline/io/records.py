"""The records the commit protocol stores and passes between modules, typed.

    PartRecord   one committed part: which rows of which input file, in which staged files
    FileRecord   an input file read to its end: its record count (written by the read stage)
    SourceEntry  one input file in a published version: its data files and what they cover
    Manifest     one published version of the output
    PublishPlan  what a publish will do (written before it starts, so a crash rolls forward)
    LedgerEntry  one run in `OUT/_runs/` (inputs, status, summary)

Stored as JSON. Unknown fields are ignored on read, so an output written by a newer
version stays readable by an older one.
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.io.ranges import RangeSet

COVERS_TO_END = -1  # a read error's `covers_to`: every position from it to the end of the file


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PartFile(Record):
    path: str = Field(description="Staged file, relative to the output root.")
    rows: int = Field(description="Rows in the file.")
    bytes: int = Field(0, description="Size of the file.")


class TaskCount(Record):
    ok: int = 0
    error: int = 0
    truncated: int = 0


class PartRecord(Record):
    key: str = Field(description="<unit>-<first position of the batch's rows of the unit>, then \".<n>\" for its later commit waves (pipeline/batch/parts.py): names the commit record.")
    run_id: str
    source: str = Field(description="URI of the input file the rows come from.")
    unit: str = Field(description="Commit unit of the rows (position // rows_per_unit).")
    unit_rows: int = Field(description="Rows the reader produced for the whole unit when it read this part.")
    positions: list[tuple[int, int]] = Field(description="The rows' positions, as inclusive ranges.")
    rows: int
    file_rows: Optional[int] = Field(None, description="Records in the input file, when this part's rows were read to its end.")
    read_errors: list[tuple[int, int]] = Field(
        default_factory=list, description="(position, covers_to) of read_error rows; covers_to -1: to the end."
    )
    tasks: Optional[list[str]] = Field(None, description="Retry parts: the tasks computed for these rows (None: all).")
    counts: dict[str, TaskCount] = Field(default_factory=dict)
    prompt_tokens: int = 0
    output_tokens: int = 0
    files: dict[str, PartFile] = Field(default_factory=dict, description="dataset -> staged file (no file: no rows).")
    committed_at: float = 0.0

    def position_set(self) -> RangeSet:
        return RangeSet(self.positions)


class FileRecord(Record):
    source: str
    fingerprint: str
    file_rows: int = Field(description="Records in the file (the reader reached its end).")


class SourceEntry(Record):
    fingerprint: str = Field(description="Content fingerprint of the input file these rows were read from.")
    run_id: str = Field(description="The run that (last) computed this file.")
    file_rows: Optional[int] = Field(None, description="Records in the file; None if it could never be read to its end.")
    rows: int = Field(0, description="Rows held for it per task (results and error records, read errors counted once).")
    positions: list[tuple[int, int]] = Field(default_factory=list, description="Positions with a row, as ranges.")
    read_errors: list[tuple[int, int]] = Field(default_factory=list, description="(position, covers_to) of its read errors.")
    read_error_rows: int = Field(0, description="Records covered by its read errors (their own rows included), if known.")
    files: list[str] = Field(default_factory=list, description="Data files holding its rows, all datasets.")


class Manifest(Record):
    version: int = 0
    runs: list[str] = Field(default_factory=list, description="Runs whose rows this version holds.")
    config: Optional[str] = None
    compat: Optional[str] = Field(None, description="The configuration apart from fit-the-context settings (retry-errors must match it).")
    model: Optional[str] = None
    published_at: float = 0.0
    plan_id: Optional[str] = Field(None, description="The publish plan that wrote this version.")
    datasets: dict[str, list[str]] = Field(default_factory=dict, description="dataset -> data files (what readers read).")
    sources: dict[str, SourceEntry] = Field(default_factory=dict, description="input file URI -> what it holds.")
    retired: dict[str, float] = Field(
        default_factory=dict, description="Files of earlier versions -> when they left; deleted after the retention."
    )

    def files(self) -> set[str]:
        return {f for fs in self.datasets.values() for f in fs}


def datasets_of(sources: dict[str, SourceEntry]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for e in sources.values():
        for f in e.files:
            out.setdefault(posixpath.dirname(f), set()).add(f)
    return {d: sorted(fs) for d, fs in sorted(out.items())}


class PublishStep(Record):
    srcs: list[str] = Field(description="Staged files; one: a move, several: merged into one file (compaction).")
    dst: str


class PublishPlan(Record):
    plan_id: str
    run_id: str
    kind: Literal["run", "retry-errors"] = "run"
    append: bool = False
    base_version: int
    steps: list[PublishStep]
    touched: dict[str, SourceEntry] = Field(description="The input files this publish (re)places, with their new entries.")
    drop_files: list[str] = Field(default_factory=list, description="Files of the base version this publish replaces.")
    meta: dict[str, Any] = Field(default_factory=dict)
    manifest: Manifest = Field(description="The version to switch to (on the base version).")


class InputFile(Record):
    uri: str
    fingerprint: str
    size: int = -1


class LedgerEntry(Record):
    run_id: str
    kind: Literal["run", "retry-errors"] = "run"
    status: Literal["running", "published", "failed"] = "running"
    config: Optional[str] = None
    model: Optional[str] = None
    output: str = ""
    inputs: list[InputFile] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    retried_kinds: Optional[list[str]] = None
    started_at: float = 0.0
    finished_at: Optional[float] = None
    error: Optional[str] = None
    summary: dict[str, Any] = Field(default_factory=dict)
    input: Optional[dict[str, Any]] = Field(
        None, description="The reader options (InputConfig as JSON): how to read the inputs again (`pipeline show`)."
    )
