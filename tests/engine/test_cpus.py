"""Planning engines onto cores: made-up topologies (a many-core node cannot be had here),
and the real one of this machine read from /sys."""

import multiprocessing as mp
import os

import pytest

from pipeline.engine.cpus import (
    RESERVE_FROM_CORES,
    CpuTopology,
    claim_slot,
    engines_per_node,
    format_cpu_list,
    logical_cpus_per_engine,
    parse_cpu_list,
    plan_engines,
)


def topology(nodes: list[int], smt: int = 1) -> CpuTopology:
    """`nodes[i]` physical cores on NUMA node i; with smt=2 each core has a sibling numbered
    after all first siblings (Linux's usual numbering: 0-31 then 32-63)."""
    total = sum(nodes)
    cpus, node_of, core_of = [], {}, {}
    core = 0
    for n, k in enumerate(nodes):
        for _ in range(k):
            for t in range(smt):
                c = core + t * total
                cpus.append(c)
                node_of[c] = n
                core_of[c] = (n, core)
            core += 1
    return CpuTopology(tuple(sorted(cpus)), node_of, core_of)


def test_cpu_lists_round_trip():
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpu_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    assert format_cpu_list([5]) == "5"


def test_two_cores_one_engine_on_both_without_a_reserved_core():
    (slot,) = plan_engines(topology([2]))
    assert slot.compute == (0, 1) and slot.reserved == ()
    assert slot.bind == "0-1"


def test_many_core_node_one_engine_per_numa_node_each_reserving_a_core():
    topo = topology([32, 32], smt=2)  # 2 sockets x 32 cores x 2 threads = 128 logical CPUs
    assert engines_per_node(topo) == 2
    a, b = plan_engines(topo)
    # one thread per physical core: the SMT siblings (64-127) are not used for compute
    assert a.nodes == (0,) and a.compute == tuple(range(0, 31)) and a.reserved == (31,)
    assert b.nodes == (1,) and b.compute == tuple(range(32, 63)) and b.reserved == (63,)
    assert not set(a.cpus) & set(b.cpus)


def test_more_engines_than_numa_nodes_split_each_node_evenly():
    slots = plan_engines(topology([16, 16]), engines=4)
    assert [s.nodes for s in slots] == [(0,), (0,), (1,), (1,)]
    assert [len(s.cpus) for s in slots] == [8, 8, 8, 8]
    assert all(len(s.reserved) == 1 for s in slots)  # 8 cores >= RESERVE_FROM_CORES
    assert len({c for s in slots for c in s.cpus}) == 32  # disjoint, all cores used


def test_small_slots_keep_no_reserved_core():
    slots = plan_engines(topology([2]), engines=2)
    assert [s.compute for s in slots] == [(0,), (1,)]
    assert all(s.reserved == () for s in slots)
    small = plan_engines(topology([RESERVE_FROM_CORES - 1]))[0]
    assert small.reserved == ()


def test_fewer_engines_than_nodes_span_nodes():
    (slot,) = plan_engines(topology([8, 8, 8, 8]), engines=1)
    assert slot.nodes == (0, 1, 2, 3) and len(slot.cpus) == 32
    a, b = plan_engines(topology([8, 8, 8, 8]), engines=2)
    assert a.nodes == (0, 1) and b.nodes == (2, 3)


def test_unequal_nodes_get_engines_in_proportion_to_their_cores():
    slots = plan_engines(topology([12, 4]), engines=4)
    assert [s.nodes[0] for s in slots].count(0) == 3
    with pytest.raises(ValueError):
        plan_engines(topology([2]), engines=3)


def test_overrides_reserved_cores_and_threads():
    (slot,) = plan_engines(topology([16]), reserved_cores=0)
    assert len(slot.compute) == 16
    (slot,) = plan_engines(topology([16]), reserved_cores=2, threads=4)
    assert slot.compute == (0, 1, 2, 3) and slot.reserved == (14, 15)
    (slot,) = plan_engines(topology([2]), reserved_cores=5)  # never all cores of a slot
    assert slot.compute == (0,) and slot.reserved == (1,)


def test_logical_cpus_let_ray_place_at_most_the_planned_engines_and_a_reader():
    assert logical_cpus_per_engine(2, 1) == 1  # this machine: one engine and the read stage
    assert logical_cpus_per_engine(128, 2) == 63
    assert 2 * logical_cpus_per_engine(128, 2) <= 128 - 1


def test_detect_reads_this_machine():
    topo = CpuTopology.detect()
    assert set(topo.cpus) == os.sched_getaffinity(0)
    assert sum(len(v) for v in topo.nodes().values()) >= 1


def _hold(lock_dir, slots, conn):
    claim = claim_slot(slots, lock_dir)
    conn.send(claim.slot.index)
    conn.recv()  # hold until told to exit


def test_claims_give_each_process_its_own_slot_and_free_it_when_the_holder_dies(tmp_path):
    slots = plan_engines(topology([4]), engines=2)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_hold, args=(str(tmp_path), slots, child))
    p.start()
    assert parent.recv() == 0
    mine = claim_slot(slots, str(tmp_path))
    assert mine.slot.index == 1  # slot 0 is held by the other process
    p.kill()  # SIGKILL: no clean-up in the holder; the kernel frees its lock
    p.join()
    again = claim_slot(slots, str(tmp_path))
    assert again.slot.index == 0
    again.release()
    mine.release()
