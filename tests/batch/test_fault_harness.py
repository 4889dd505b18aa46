"""The fault harness: a run killed at every named step of commit and publish, and at random
points for several seeds, each followed by a rerun. After each: exactly the input ids,
once per task; and a reader polling the output through the manifest all along saw only
the old version or the new one, each complete.

The killed run replaces an earlier published version (a new input file joined the
corpus), so "old" is a real version readers must keep seeing whole. Runs use the fake
engine (fakejob.py: the real command, rows computed in-process) so that each kill point
costs about a second; tests/batch/test_exactly_once_e2e.py kills real-engine runs.
"""

from __future__ import annotations

import random
import shutil
import threading
from pathlib import Path

import pytest

from clijob import write_jsonl_corpus, write_spec
from harness import TASKS, assert_exactly_once, fake_model, run_fake, summary, task_ids
from pipeline.io.manifest import read_manifest
from pipeline.io.store import Store

NAMED = [
    "run-locked:0",  # lease taken, nothing written yet
    "file-record:0",  # the read stage reached the end of a file
    "commit-files:0",  # a part's files written, its commit record not
    "commit-record:5",  # after some commits
    "publish-plan:0",  # coverage proven, plan not written
    "publish-step:0",  # plan written, nothing moved
    "publish-step:2",  # some files moved or merged
    "publish-switch:0",  # all in place, version not created
    "publish-pointer:0",  # version created, pointer not updated
    "publish-cleanup:0",  # switched, staging not cleaned
    "publish-ledger:0",  # cleaned, ledger not updated
]
SEEDS = [11, 23, 37, 41]


class Reader(threading.Thread):
    """Reads every task through the manifest in a loop; records what it saw."""

    def __init__(self, out: str, tasks=TASKS):
        super().__init__(daemon=True)
        self.out, self.tasks = out, tasks
        self.seen: list[tuple] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                version = read_manifest(Store(self.out)).version  # one version for all datasets
                self.seen.append(tuple(tuple(sorted(task_ids(self.out, t, version))) for t in self.tasks) + (version,))
            except Exception as e:  # noqa: BLE001 - any failure to read a published version is a finding
                self.errors.append(f"{type(e).__name__}: {e}")
            self.stop.wait(0.02)  # leave the CPU to the run under test


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An output holding version 1 (two files), and a corpus with a third file added."""
    d = tmp_path_factory.mktemp("harness")
    model = fake_model(d / "model")
    corpus = d / "corpus"
    old_ids = write_jsonl_corpus(corpus, {"a.jsonl": 45, "b.jsonl": 30})
    spec = write_spec(
        d / "job.yaml",
        input={"paths": [str(corpus)], "id_field": "id"},
        output={"path": str(d / "base"), "rows_per_unit": 20, "target_file_mib": 0.004},
        tasks={"sentiment": {}, "summarization": {}},
        model={"path": str(model)},
        engine={"batch_rows": 8, "batches_in_flight": 3},
    )
    run_fake("run", str(spec))
    new_ids = old_ids + write_jsonl_corpus(corpus, {"c.jsonl": 25}, start=900)
    trace = d / "trace"
    shutil.copytree(d / "base", d / "traced")
    run_fake("run", str(spec), "--output", str(d / "traced"), env={"PIPELINE_FAULT_TRACE": str(trace)})
    points = trace.read_text().split()
    return {"dir": d, "spec": spec, "old": sorted(old_ids), "new": sorted(new_ids), "points": points}


def _kill_then_rerun(setup, tmp_path: Path, fault: str, seed: int = 0) -> None:
    out = tmp_path / "out"
    shutil.copytree(setup["dir"] / "base", out)
    reader = Reader(str(out))
    reader.start()
    try:
        env = {"PIPELINE_FAULT": fault, "PIPELINE_FAKE_SEED": str(seed)}
        p = run_fake("run", str(setup["spec"]), "--output", str(out), env=env, check=False)
        assert p.returncode == 86, f"{fault}: exit {p.returncode}\n{p.stderr[-3000:]}"
        run_fake("run", str(setup["spec"]), "--output", str(out), env={"PIPELINE_FAKE_SEED": str(seed + 1)})
    finally:
        reader.stop.set()
        reader.join(timeout=30)
    assert_exactly_once(out, setup["new"])
    assert not reader.errors, reader.errors[:3]
    old = tuple(tuple(setup["old"]) for _ in TASKS)
    new = tuple(tuple(setup["new"]) for _ in TASKS)
    states = {s[:-1] for s in reader.seen}
    assert states <= {old, new}, f"{fault}: a reader saw a version that was neither the old nor the new one"
    assert reader.seen and reader.seen[-1][:-1] == new
    assert not list(out.glob("_staging/*/_commits/*")), "staging left behind"


@pytest.mark.parametrize("fault", NAMED)
def test_killed_at_a_named_step_then_rerun(setup, tmp_path, fault):
    name = fault.split(":")[0]
    assert name in setup["points"], f"the run never passes {name}: the harness would test nothing"
    _kill_then_rerun(setup, tmp_path, fault)


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_at_a_random_point_then_rerun(setup, tmp_path, seed):
    k = random.Random(seed).randrange(len(setup["points"]))
    _kill_then_rerun(setup, tmp_path, f"any:{k}", seed)


def test_the_summary_of_a_publish_finished_by_the_rerun_is_the_run_s(setup, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(setup["dir"] / "base", out)
    p = run_fake("run", str(setup["spec"]), "--output", str(out), env={"PIPELINE_FAULT": "publish-step:1"}, check=False)
    assert p.returncode == 86
    run_fake("run", str(setup["spec"]), "--output", str(out))
    s = summary(out)
    assert s["status"] == "published" and s["rows"] == len(setup["new"]) and s["version"] == 2
