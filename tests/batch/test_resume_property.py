"""Property-based: coverage and resume over random files, part layouts, batch sizes and kill
points (Hypothesis).

For any file (with blank lines, so positions have gaps), any rows_per_unit, any batch size,
any order in which batches in flight finish, a kill after any number of commits, and a
rerun with another batch size (and, at times, a zombie attempt committing rows again with
other boundaries, or, with pieces committed in waves, the same batches retried): the
publish's proof accepts the parts, and they hold every record of the file exactly once. Rows are computed by the fake engine of fakejob.py, in-process;
everything else is the real read stage, part bookkeeping and commit layer.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakejob import execute_local
from pipeline.batch.plan import RunPlan
from pipeline.config import JobSpec
from pipeline.io.commit import RunCommitter, SourceSpec
from pipeline.io.ranges import RangeSet
from pipeline.io.sources import list_sources
from pipeline.io.store import Store


class Killed(Exception):
    pass


def _plan(tmp, spec: JobSpec) -> RunPlan:
    return RunPlan(spec, str(tmp / "model"), "cfg", "prop", list_sources(spec.input), False, Store(spec.output.path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(st.booleans(), min_size=1, max_size=120),  # True: a record, False: a blank line
    rows_per_unit=st.integers(1, 25),
    batch1=st.integers(1, 30),
    batch2=st.integers(1, 30),
    in_flight=st.integers(1, 4),
    kill_after=st.integers(0, 40),
    seed=st.integers(0, 1000),
    zombie=st.booleans(),
    waves=st.booleans(),
)
def test_any_layout_resumes_to_every_record_exactly_once(tmp_path_factory, monkeypatch, records, rows_per_unit,
                                                         batch1, batch2, in_flight, kill_after, seed, zombie, waves):
    tmp = tmp_path_factory.mktemp("prop")
    lines, positions = [], []
    for i, is_record in enumerate(records):
        lines.append(json.dumps({"id": f"r{i}", "text": f"row {i}"}) if is_record else "   ")
        if is_record:
            positions.append(i)
    (tmp / "a.jsonl").write_text("\n".join(lines) + "\n")
    spec = JobSpec.model_validate({
        "input": {"paths": [str(tmp / "a.jsonl")], "id_field": "id"},
        "output": {"path": str(tmp / "out"), "rows_per_unit": rows_per_unit},
        "tasks": {"sentiment": {}},
        "engine": {"batch_rows": batch1, "batches_in_flight": in_flight},
    })
    plan = _plan(tmp, spec)
    commits = {"n": 0}
    real_commit = RunCommitter.commit_part

    def dying_commit(self, record, tables):
        if commits["n"] >= kill_after:
            raise Killed
        commits["n"] += 1
        return real_commit(self, record, tables)

    monkeypatch.setenv("PIPELINE_FAKE_SEED", str(seed))
    monkeypatch.setenv("PIPELINE_FAKE_WAVES", "1" if waves else "0")
    monkeypatch.setattr(RunCommitter, "commit_part", dying_commit)
    try:
        execute_local(plan, [], None)
    except Killed:
        pass
    monkeypatch.setattr(RunCommitter, "commit_part", real_commit)
    committer = plan.committer
    before = committer.committed_parts()
    if zombie and before:
        # a second attempt of the killed run commits rows again with other batch boundaries
        monkeypatch.setenv("PIPELINE_FAKE_SEED", str(seed + 7))
        # (committing in waves: the same batches again, as Ray retries a batch whose actor died)
        execute_local(dataclasses.replace(plan, spec=spec.model_copy(update={"engine": spec.engine.model_copy(
            update={"batch_rows": batch1 if waves else max(1, batch1 // 2 + 1)})})), [], None)
        before = committer.committed_parts()
    rerun = dataclasses.replace(plan, spec=spec.model_copy(update={"engine": spec.engine.model_copy(update={"batch_rows": batch2})}))
    execute_local(rerun, before, None)

    source = plan.sources[0]
    prepared = committer.prepare([SourceSpec(uri=source.uri, fingerprint=source.fingerprint)])
    cov = prepared.coverage[source.uri]
    assert cov.file_rows == len(positions) and cov.rows == len(positions)
    held = []
    for p in prepared.parts:
        t = Store(spec.output.path).read_parquet(p.files["sentiment"].path)
        held += t["position"].to_pylist()
        assert RangeSet.of(t["position"].to_pylist()) == p.position_set()
    assert sorted(held) == positions  # every record once: none lost, none twice
