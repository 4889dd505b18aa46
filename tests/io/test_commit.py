"""The output commit protocol: parts, coverage check, atomic publish and its recovery."""

import os

import pyarrow as pa
import pytest

from pipeline.io.commit import ERROR_SCHEMA, CommitError, RunCommitter, read_dataset, read_manifest
from pipeline.io.store import Store

SCHEMA = pa.schema([("row_id", pa.string()), ("v", pa.int64())])


def commit(c: RunCommitter, unit: str, first: int, n: int, unit_rows: int):
    table = pa.table({"row_id": [f"{unit}:{first + i}" for i in range(n)], "v": list(range(first, first + n))}, schema=SCHEMA)
    key = f"{unit}-{first:012d}"
    return c.commit_part(key, {"t": table, "errors": ERROR_SCHEMA.empty_table()}, {
        "unit": unit, "source": "s", "first_position": first, "last_position": first + n - 1,
        "rows": n, "unit_rows": unit_rows, "counts": {"t": {"ok": n, "error": 0}},
        "prompt_tokens": 0, "output_tokens": 0})


def files_outside_staging(root):
    out = []
    for d, _, fs in os.walk(root):
        if "_staging" in d:
            continue
        out += [os.path.relpath(os.path.join(d, f), root) for f in fs if f.endswith(".parquet")]
    return sorted(out)


def test_parts_publish_and_read_back(tmp_path):
    store = Store(str(tmp_path))
    c = RunCommitter(store, "r1")
    commit(c, "u1", 0, 3, 5)
    commit(c, "u1", 3, 2, 5)
    commit(c, "u2", 0, 4, 4)
    assert c.is_committed("u1-000000000003") and not c.is_committed("u1-000000000009")
    assert files_outside_staging(tmp_path) == []  # nothing visible before publish
    manifest = c.publish(c.committed_parts(), append=False, meta={"config": "x"})
    assert manifest["version"] == 1 and manifest["runs"] == ["r1"]
    t = read_dataset(str(tmp_path), "t")
    assert sorted(t["row_id"].to_pylist()) == sorted([f"u1:{i}" for i in range(5)] + [f"u2:{i}" for i in range(4)])
    assert "errors" not in manifest["datasets"]  # empty error tables write no files
    assert not (tmp_path / "_staging" / "r1").exists()
    assert (tmp_path / "_SUCCESS").exists()


def test_incomplete_or_overlapping_units_are_never_published(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r1")
    commit(c, "u1", 0, 3, 5)  # two rows of u1 missing
    with pytest.raises(CommitError, match="3 rows committed, 5 read"):
        c.publish(c.committed_parts(), append=False, meta={})
    commit(c, "u1", 2, 3, 5)  # overlaps position 2
    with pytest.raises(CommitError, match="overlap"):
        c.publish(c.committed_parts(), append=False, meta={})
    assert read_manifest(Store(str(tmp_path))) is None


def test_new_run_replaces_old_only_when_complete_and_append_keeps_it(tmp_path):
    store = Store(str(tmp_path))
    old = RunCommitter(store, "old")
    commit(old, "a", 0, 2, 2)
    old.publish(old.committed_parts(), append=False, meta={})
    new = RunCommitter(store, "new")
    commit(new, "b", 0, 3, 3)
    # Before the new run publishes, readers still see the old output, whole.
    assert read_dataset(str(tmp_path), "t").num_rows == 2
    plan = new.plan_publish(new.committed_parts(), append=False, meta={})
    new.publish(new.committed_parts(), append=False, meta={})
    assert sorted(read_dataset(str(tmp_path), "t")["row_id"].to_pylist()) == ["b:0", "b:1", "b:2"]
    assert plan["delete"] and not any((tmp_path / p).exists() for p in plan["delete"])  # old files collected
    inc = RunCommitter(store, "inc")
    commit(inc, "c", 0, 1, 1)
    m = inc.publish(inc.committed_parts(), append=True, meta={})
    assert m["runs"] == ["new", "inc"] and read_dataset(str(tmp_path), "t").num_rows == 4


@pytest.mark.parametrize("moves_done", [0, 1, 2])
def test_publish_killed_midway_is_rolled_forward(tmp_path, moves_done):
    store = Store(str(tmp_path))
    old = RunCommitter(store, "old")
    commit(old, "a", 0, 2, 2)
    old.publish(old.committed_parts(), append=False, meta={})
    new = RunCommitter(store, "new")
    commit(new, "b", 0, 2, 4)
    commit(new, "b", 2, 2, 4)
    plan = new.plan_publish(new.committed_parts(), append=False, meta={})
    store.write_json("_staging/new/_publish.json", plan)
    for src, dst in plan["moves"][:moves_done]:  # the "crash": only some moves happened
        store.move(src, dst)
    # Readers through the manifest still see the complete old version.
    assert read_dataset(str(tmp_path), "t")["row_id"].to_pylist() == ["a:0", "a:1"]
    # The next run finds the plan and finishes it.
    pending = RunCommitter(store, "new").pending_publish()
    assert pending == plan
    RunCommitter(store, "new").execute_publish(pending)
    assert sorted(read_dataset(str(tmp_path), "t")["row_id"].to_pylist()) == ["b:0", "b:1", "b:2", "b:3"]
    assert files_outside_staging(tmp_path) == sorted(dst for _, dst in plan["moves"])


def test_store_writes_are_atomic_and_list_skips_temp_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_json("x/a.json", {"k": 1})
    (tmp_path / "x" / "b.json.tmp-1234").write_text("{partial")
    assert list(store.list("x")) == ["x/a.json"]
    assert store.read_json("x/missing.json", default="d") == "d"
    store.move("x/a.json", "y/a.json")
    store.move("x/a.json", "y/a.json")  # idempotent
    assert store.read_json("y/a.json") == {"k": 1}
