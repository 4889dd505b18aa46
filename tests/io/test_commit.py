"""The output commit protocol on a local folder: parts, coverage by positions, overlaps,
the manifest log's compare-and-swap, publish recovery, compaction, retention."""

import os
import time

import pyarrow as pa
import pytest

from pipeline.io.commit import ERROR_SCHEMA, CommitError, RunCommitter, SourceSpec, part_key, read_dataset, read_manifest
from pipeline.io.housekeeping import collect_garbage
from pipeline.io.manifest import read_version, version_rel
from pipeline.io.ranges import RangeSet
from pipeline.io.records import FileRecord, PartRecord, TaskCount
from pipeline.io.store import Store

SCHEMA = pa.schema([("row_id", pa.string()), ("source", pa.string()), ("position", pa.int64())])


def commit(c: RunCommitter, src: str, positions, unit_rows=None, rpu=100, file_rows=None, read_error=None):
    positions = list(positions)
    unit = f"{src}-{positions[0] // rpu:08d}"
    table = pa.table({"row_id": [f"{src}:{p}" for p in positions], "source": [src] * len(positions), "position": positions}, schema=SCHEMA)
    errors = ERROR_SCHEMA.empty_table()
    read_errors = []
    if read_error is not None:
        errors = pa.Table.from_pylist([{"row_id": f"{src}#{read_error}", "source": src, "position": read_error, "task": "t",
                                         "error_kind": "read_error", "error_message": "boom", "run_id": c.run_id,
                                         "covers_to": -1}], schema=ERROR_SCHEMA)
        read_errors = [(read_error, -1)]
        positions = positions + [read_error]
    rec = PartRecord(key=part_key(unit, min(positions)), run_id=c.run_id, source=src, unit=unit,
                     unit_rows=unit_rows if unit_rows is not None else len(positions),
                     positions=[tuple(r) for r in RangeSet.of(positions).ranges()], rows=len(positions),
                     file_rows=file_rows, read_errors=read_errors, counts={"t": TaskCount(ok=table.num_rows)})
    return c.commit_part(rec, {"t": table, "errors": errors})


def publish(c: RunCommitter, sources, append=False, **kw):
    specs = [SourceSpec(uri=s, fingerprint="fp") for s in sources]
    prepared = c.prepare(specs)
    return c.publish(c.plan_publish(prepared, specs, append=append, meta={"config": "x"}, **kw))


def files_outside_staging(root):
    out = []
    for d, _, fs in os.walk(root):
        if "_staging" in d:
            continue
        out += [os.path.relpath(os.path.join(d, f), root) for f in fs if f.endswith(".parquet")]
    return sorted(out)


def ids(root, dataset="t"):
    return sorted(read_dataset(str(root), dataset)["row_id"].to_pylist())


def test_parts_publish_and_read_back(tmp_path):
    store = Store(str(tmp_path))
    c = RunCommitter(store, "r1")
    commit(c, "a", range(0, 3), unit_rows=5)
    commit(c, "a", range(3, 5), unit_rows=5, file_rows=9)
    commit(c, "a", range(100, 104), file_rows=9)  # JSONL positions are line numbers: blank lines leave gaps
    commit(c, "b", range(0, 4), file_rows=4)
    assert files_outside_staging(tmp_path) == []  # nothing visible before publish
    m = publish(c, ["a", "b"])
    assert m.version == 1 and m.runs == ["r1"]
    assert ids(tmp_path) == sorted([f"a:{i}" for i in [0, 1, 2, 3, 4, 100, 101, 102, 103]] + [f"b:{i}" for i in range(4)])
    assert "errors" not in m.datasets  # empty error tables write no files
    assert len(m.datasets["t"]) == 2  # small parts merged: one file per input file
    assert m.sources["a"].file_rows == 9 and m.sources["a"].positions == [(0, 4), (100, 103)]
    assert not (tmp_path / "_staging" / "r1").exists()
    assert (tmp_path / "_manifest" / "00000001.json").exists()


def test_missing_rows_or_unread_files_are_never_published(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "a", range(0, 3), file_rows=5)
    with pytest.raises(CommitError, match="2 of its 5 records are missing"):
        publish(c, ["a"])
    commit(c, "b", range(0, 3))  # never read to its end, no read error: cannot be proven whole
    with pytest.raises(CommitError, match="not read to its end"):
        publish(c, ["b"])
    with pytest.raises(CommitError, match="nothing of it was committed"):
        publish(c, ["z"])
    assert read_manifest(Store(str(tmp_path))) is None


def test_record_count_from_the_read_stage_proves_a_file_whose_last_part_was_lost(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "a", range(0, 3))
    c.write_file_record("k", FileRecord(source="a", fingerprint="fp", file_rows=5))
    with pytest.raises(CommitError, match="2 of its 5 records are missing"):
        publish(c, ["a"])
    commit(c, "a", range(3, 5))
    assert publish(c, ["a"]).sources["a"].rows == 5


def test_read_error_stands_for_the_rest_of_the_file(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "a", range(0, 3), read_error=3)  # read 3 rows, then the stream broke
    c.write_file_record("k", FileRecord(source="a", fingerprint="fp", file_rows=10))  # an earlier complete read
    m = publish(c, ["a"])
    e = m.sources["a"]
    assert e.read_errors == [(3, -1)] and e.read_error_rows == 7  # positions 3..9
    c2 = RunCommitter(Store(str(tmp_path / "o2")), "r1")
    commit(c2, "a", range(0, 3), read_error=3)  # record count unknown: the error covers "the rest"
    m = publish(c2, ["a"])
    assert m.sources["a"].file_rows is None and m.sources["a"].read_errors == [(3, -1)]


def test_non_contiguous_parts_are_covered_by_position(tmp_path):
    """Batch k+1 committed before batch k, the run killed, the rerun's batch spans the gap:
    counted by positions, the unit is whole (it used to be an 'overlap' forever)."""
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "a", range(16, 32), unit_rows=40)
    commit(c, "a", list(range(0, 16)) + list(range(32, 40)), unit_rows=40, file_rows=40)
    assert publish(c, ["a"]).sources["a"].positions == [(0, 39)]


def test_overlapping_parts_are_trimmed_to_first_commit(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "a", range(0, 20), unit_rows=40)
    time.sleep(0.01)
    commit(c, "a", range(10, 40), unit_rows=40, file_rows=40)  # rows 10..19 twice
    m = publish(c, ["a"])
    assert ids(tmp_path) == sorted(f"a:{i}" for i in range(40))
    assert m.sources["a"].rows == 40


def test_new_run_replaces_old_only_when_complete_and_append_keeps_it(tmp_path):
    store = Store(str(tmp_path))
    old = RunCommitter(store, "old")
    commit(old, "a", range(2), file_rows=2)
    publish(old, ["a"])
    new = RunCommitter(store, "new")
    commit(new, "b", range(3), file_rows=3)
    assert ids(tmp_path) == ["a:0", "a:1"]  # the old version, whole, until the switch
    m = publish(new, ["b"])
    assert ids(tmp_path) == ["b:0", "b:1", "b:2"]
    assert set(m.retired) == set(read_version(store, 1).datasets["t"])  # old files: retired, still there
    assert all((tmp_path / f).exists() for f in m.retired)
    assert read_dataset(str(tmp_path), "t", version=1).num_rows == 2  # a reader of version 1 still works
    inc = RunCommitter(store, "inc")
    commit(inc, "c", range(1), file_rows=1)
    m = publish(inc, ["c"], append=True)
    assert m.runs == ["new", "inc"] and len(ids(tmp_path)) == 4


def test_a_changed_input_file_replaces_its_old_rows(tmp_path):
    store = Store(str(tmp_path))
    first = RunCommitter(store, "r1")
    commit(first, "a", range(20), file_rows=20)
    commit(first, "b", range(5), file_rows=5)
    publish(first, ["a", "b"])
    second = RunCommitter(store, "r2")  # a.jsonl grew to 25 rows: an incremental run recomputes it
    commit(second, "a", range(25), file_rows=25)
    m = publish(second, ["a"], append=True)
    assert len(ids(tmp_path)) == 30 and len(set(ids(tmp_path))) == 30
    assert m.sources["a"].run_id == "r2" and m.sources["b"].run_id == "r1" and m.runs == ["r1", "r2"]


@pytest.mark.parametrize("steps_done", [0, 1, 2])
def test_publish_killed_midway_is_rolled_forward(tmp_path, steps_done):
    store = Store(str(tmp_path))
    old = RunCommitter(store, "old")
    commit(old, "a", range(2), file_rows=2)
    publish(old, ["a"])
    new = RunCommitter(store, "new", target_bytes=1)  # every part its own file: several steps
    commit(new, "b", range(0, 2), unit_rows=4)
    commit(new, "b", range(2, 4), unit_rows=4, file_rows=4)
    specs = [SourceSpec(uri="b", fingerprint="fp")]
    plan = new.plan_publish(new.prepare(specs), specs, append=False, meta={})
    store.write_json("_staging/new/_publish.json", plan)
    for step in plan.steps[:steps_done]:  # the "crash": only some steps happened
        new._do_step(step)
    assert ids(tmp_path) == ["a:0", "a:1"]  # readers through the manifest: the complete old version
    pending = RunCommitter(store, "new").pending_publish()
    assert pending == plan
    RunCommitter(store, "new").execute_publish(pending)
    assert ids(tmp_path) == ["b:0", "b:1", "b:2", "b:3"]


def test_manifest_switch_is_a_compare_and_swap(tmp_path):
    """Two writers planned on version 1: the second to switch rebases a run on the winner's
    version (its own files replace; with append it keeps the winner's other files)."""
    store = Store(str(tmp_path))
    base = RunCommitter(store, "base")
    commit(base, "a", range(2), file_rows=2)
    publish(base, ["a"])
    w1, w2 = RunCommitter(store, "w1"), RunCommitter(store, "w2")
    commit(w1, "b", range(3), file_rows=3)
    commit(w2, "c", range(4), file_rows=4)
    specs1, specs2 = [SourceSpec("b", "fp")], [SourceSpec("c", "fp")]
    p1 = w1.plan_publish(w1.prepare(specs1), specs1, append=True, meta={})
    p2 = w2.plan_publish(w2.prepare(specs2), specs2, append=True, meta={})
    assert p1.manifest.version == p2.manifest.version == 2
    w1.publish(p1)
    m = w2.publish(p2)
    assert m.version == 3 and set(m.sources) == {"a", "b", "c"}
    assert read_version(store, 2).plan_id == p1.plan_id  # the log keeps both, in order
    assert len(ids(tmp_path)) == 9


def test_retry_publish_that_lost_the_race_fails_cleanly(tmp_path):
    store = Store(str(tmp_path))
    base = RunCommitter(store, "base")
    commit(base, "a", range(2), file_rows=2)
    publish(base, ["a"])
    r = RunCommitter(store, "retry-x")
    commit(r, "b", range(1), file_rows=1)
    specs = [SourceSpec("b", "fp")]
    plan = r.plan_publish(r.prepare(specs), specs, append=True, meta={}, kind="retry-errors")
    other = RunCommitter(store, "other")
    commit(other, "c", range(1), file_rows=1)
    publish(other, ["c"], append=True)
    with pytest.raises(CommitError, match="another writer published version 2"):
        r.publish(plan)
    assert read_manifest(store).version == 2


def test_pointer_behind_the_log_is_corrected_by_readers(tmp_path):
    store = Store(str(tmp_path))
    c = RunCommitter(store, "r1")
    commit(c, "a", range(2), file_rows=2)
    publish(c, ["a"])
    c2 = RunCommitter(store, "r2")
    commit(c2, "b", range(3), file_rows=3)
    specs = [SourceSpec("b", "fp")]
    plan = c2.plan_publish(c2.prepare(specs), specs, append=False, meta={})
    for step in plan.steps:
        c2._do_step(step)
    assert store.create_json(version_rel(2), plan.manifest)  # switched, killed before the pointer
    assert store.read_json("_manifest.json")["version"] == 1
    assert read_manifest(store).version == 2 and ids(tmp_path) == ["b:0", "b:1", "b:2"]


def test_housekeeping_keeps_the_previous_version_for_the_retention(tmp_path):
    store = Store(str(tmp_path))
    for i, run in enumerate(("r1", "r2", "r3")):
        c = RunCommitter(store, run)
        commit(c, "a", range(i + 1), file_rows=i + 1)
        publish(c, ["a"])
    (tmp_path / "t" / "part-stray.parquet.tmp-abcd1234").write_bytes(b"partial")
    abandoned = RunCommitter(store, "dead")
    commit(abandoned, "z", range(2))
    report = collect_garbage(store, retention_s=3600)
    assert report.data_files == [] and report.staging_dirs == []  # all younger than an hour
    assert read_dataset(str(tmp_path), "t", version=2).num_rows == 2
    old_files = read_version(store, 1).datasets["t"] + read_version(store, 2).datasets["t"]
    report = collect_garbage(store, retention_s=3600, now=time.time() + 2 * 3600)
    assert sorted(report.data_files) == sorted(old_files)
    assert report.staging_dirs == ["dead"] and len(report.temp_files) == 1 and report.versions == [1, 2]
    assert ids(tmp_path) == ["a:0", "a:1", "a:2"]  # the live version untouched
    assert files_outside_staging(tmp_path) == sorted(read_manifest(store).datasets["t"])


def test_store_writes_are_atomic_and_list_skips_temp_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_json("x/a.json", {"k": 1})
    (tmp_path / "x" / "b.json.tmp-1234").write_text("{partial")
    assert list(store.list("x")) == ["x/a.json"]
    assert store.read_json("x/missing.json", default="d") == "d"
    store.move("x/a.json", "y/a.json")
    store.move("x/a.json", "y/a.json")  # idempotent
    assert store.read_json("y/a.json") == {"k": 1}
    assert store.create("y/new", b"1") and not store.create("y/new", b"2")
    assert store.read_bytes("y/new") == b"1"
    data, tag = store.read_tagged("y/new")
    assert store.replace_if("y/new", b"3", "stale-tag") is None
    assert store.replace_if("y/new", b"3", tag) is not None and store.read_bytes("y/new") == b"3"


def test_a_later_read_replaces_a_read_error(tmp_path):
    """A run killed after its read broke at position 3; the rerun could read on from there:
    its rows replace the read error (the resume state does not pass the error's row as committed)."""
    from pipeline.io.coverage import full_units

    c = RunCommitter(Store(str(tmp_path)), "r1")
    first = commit(c, "a", range(0, 3), read_error=3)
    assert full_units([first])["a"]["a-00000000"] == {"full": False, "ranges": [[0, 2]]}
    time.sleep(0.01)
    commit(c, "a", range(3, 10), file_rows=10)
    m = publish(c, ["a"])
    assert m.sources["a"].read_errors == [] and m.sources["a"].rows == 10
    assert ids(tmp_path) == sorted(f"a:{i}" for i in range(10)) and "errors" not in m.datasets
