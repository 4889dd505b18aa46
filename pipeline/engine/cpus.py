"""Where a CPU engine's threads run: the machine's cores split into one slot per engine.

vLLM's CPU build runs a model in a worker process whose OpenMP threads it binds to the
cores in `VLLM_CPU_OMP_THREADS_BIND` (`vllm/utils/ompmultiprocessing.py`). Left on `auto`,
it binds one engine to the cores of one NUMA node and keeps one core per engine out of
the binding for its scheduler process: on a 2-core machine, half the machine. Here we
decide the binding ourselves, from what the process may use:

    cores the process may use (os.sched_getaffinity) ─┐
    NUMA nodes (/sys/devices/system/node)             ├─▶ plan_engines ─▶ [EngineSlot, ...]
    engines wanted on this node (the actors)          ─┘     one per engine: compute cores, reserved cores

Rules (the measurements behind them are in bench/README.md, "Threads and engines"):
- one engine per NUMA node by default: an engine's threads and its weights stay on one
  memory node; more engines than NUMA nodes split a node's cores evenly, fewer span nodes;
- one OpenMP thread per physical core (SMT siblings share a core's matrix units);
- a core is kept off the compute threads (for vLLM's scheduler process, our actor, Ray's
  processes) only in slots of `RESERVE_FROM_CORES` cores or more. An OpenMP parallel
  region runs at its slowest thread's pace, so one compute core shared with busy
  processes slows all of them; on a small slot, losing a whole core costs more than that.

Everything here is pure except `CpuTopology.detect()` and `claim_slot()`, so the planning
is unit-tested on made-up many-core topologies (tests/engine/test_cpus.py).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Optional, Sequence

logger = logging.getLogger(__name__)

# Slots at least this large keep one core off the compute threads (see the module docstring).
RESERVE_FROM_CORES = 4


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def format_cpu_list(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (what VLLM_CPU_OMP_THREADS_BIND and taskset take)."""
    cpus = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        runs.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(runs)


@dataclass(frozen=True)
class CpuTopology:
    """The logical CPUs a process may use, the NUMA node of each, and which share a core."""

    cpus: tuple[int, ...]
    node_of: dict[int, int] = field(default_factory=dict)  # cpu -> NUMA node (missing: 0)
    core_of: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (package, core); missing: its own core

    @classmethod
    def detect(cls, sysfs: str = "/sys/devices/system") -> "CpuTopology":
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        node_of: dict[int, int] = {}
        for path in glob.glob(f"{sysfs}/node/node[0-9]*/cpulist"):
            node = int(re.search(r"node(\d+)/cpulist$", path).group(1))
            try:
                with open(path) as f:
                    for c in parse_cpu_list(f.read()):
                        node_of[c] = node
            except (OSError, ValueError):
                continue
        core_of: dict[int, tuple[int, int]] = {}
        for c in allowed:
            try:
                with open(f"{sysfs}/cpu/cpu{c}/topology/core_id") as f:
                    core = int(f.read())
                with open(f"{sysfs}/cpu/cpu{c}/topology/physical_package_id") as f:
                    pkg = int(f.read())
                core_of[c] = (pkg, core)
            except (OSError, ValueError):
                continue
        return cls(tuple(allowed), {c: node_of.get(c, 0) for c in allowed}, core_of)

    def nodes(self) -> dict[int, list[int]]:
        """NUMA node -> its allowed CPUs, one per physical core (the lowest-numbered sibling)."""
        seen: set[tuple[int, int]] = set()
        out: dict[int, list[int]] = {}
        for c in sorted(self.cpus):
            core = self.core_of.get(c, (-1, c))
            if core in seen:
                continue
            seen.add(core)
            out.setdefault(self.node_of.get(c, 0), []).append(c)
        return dict(sorted(out.items()))

    @property
    def physical_cores(self) -> int:
        return sum(len(v) for v in self.nodes().values())


@dataclass(frozen=True)
class EngineSlot:
    """The cores of one engine: its OpenMP threads bind to `compute`; `reserved` are left
    to the processes around it (vLLM's scheduler, the actor, Ray)."""

    index: int
    nodes: tuple[int, ...]
    compute: tuple[int, ...]
    reserved: tuple[int, ...] = ()

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(self.compute + self.reserved))

    @property
    def bind(self) -> str:
        """The value of VLLM_CPU_OMP_THREADS_BIND for this slot."""
        return format_cpu_list(self.compute)


def engines_per_node(topo: CpuTopology) -> int:
    """One engine per NUMA node that has cores this process may use."""
    return max(1, len(topo.nodes()))


def plan_engines(
    topo: CpuTopology,
    engines: Optional[int] = None,
    reserved_cores: Optional[int] = None,
    threads: Optional[int] = None,
) -> list[EngineSlot]:
    """Split the topology's cores into `engines` slots (default: one per NUMA node).

    `reserved_cores`: cores per slot kept off the compute threads (default: 1 in slots of
    RESERVE_FROM_CORES cores or more, else 0; never all of a slot). `threads`: at most
    this many compute threads per slot (the rest of its cores stay idle for other work).
    """
    nodes = [cpus for cpus in topo.nodes().values() if cpus]
    if not nodes:
        raise ValueError("no CPUs to plan engines on")
    n = engines or len(nodes)
    if n < 1:
        raise ValueError(f"engines must be >= 1, got {n}")
    groups: list[tuple[tuple[int, ...], list[int]]] = []  # (numa nodes, cpus)
    node_ids = list(topo.nodes())
    if n <= len(nodes):
        # Fewer engines than NUMA nodes: each engine takes whole nodes (contiguous runs of
        # them), so no core stays idle; an engine then spans nodes.
        for i in range(n):
            lo, hi = i * len(nodes) // n, (i + 1) * len(nodes) // n
            groups.append((tuple(node_ids[lo:hi]), [c for cpus in nodes[lo:hi] for c in cpus]))
    else:
        # More engines than nodes: engines spread over nodes as evenly as possible, and each
        # node's cores split evenly among the engines it holds. Never more engines than cores.
        if n > sum(len(c) for c in nodes):
            raise ValueError(f"{n} engines but only {sum(len(c) for c in nodes)} cores")
        # Each engine goes to the node that then leaves it the most cores (equal nodes:
        # round robin; unequal ones: in proportion to their cores).
        per_node = [0] * len(nodes)
        for _ in range(n):
            free = [i for i in range(len(nodes)) if per_node[i] < len(nodes[i])]
            best = max(free, key=lambda i: (len(nodes[i]) / (per_node[i] + 1), -i))
            per_node[best] += 1
        for node_id, cpus, k in zip(node_ids, nodes, per_node):
            for i in range(k):
                lo, hi = i * len(cpus) // k, (i + 1) * len(cpus) // k
                groups.append(((node_id,), cpus[lo:hi]))
    slots = []
    for i, (node_ids_i, cpus) in enumerate(groups):
        r = reserved_cores if reserved_cores is not None else (1 if len(cpus) >= RESERVE_FROM_CORES else 0)
        r = max(0, min(r, len(cpus) - 1))
        compute, reserved = cpus[: len(cpus) - r], cpus[len(cpus) - r :]
        if threads is not None:
            compute = compute[:threads]
        slots.append(EngineSlot(i, node_ids_i, tuple(compute), tuple(reserved)))
    return slots


def logical_cpus_per_engine(node_cpus: float, engines: int) -> float:
    """Ray CPUs one inference actor asks for so that Ray places at most `engines` of them
    on a node of `node_cpus` logical CPUs and one CPU stays free for the read stage. It is
    Ray's bookkeeping only: the engine's threads use the cores of its slot."""
    return float(max(1, int((node_cpus - 1) // max(1, engines))))


# -- claiming a slot on this node (several actors, one node) -------------------------------
class SlotClaim:
    """An exclusive hold on one slot of this node for as long as the process lives (an
    fcntl lock: the kernel frees it when the process dies, so a killed actor's
    replacement finds its slot free)."""

    def __init__(self, slot: EngineSlot, handle: Optional[IO]):
        self.slot = slot
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def claim_slot(slots: Sequence[EngineSlot], lock_dir: Optional[str] = None) -> SlotClaim:
    """Take the first slot no other live process on this node holds. When all are held (more
    engines on this node than planned), share the first one and say so."""
    layout = hashlib.sha256(repr([s.cpus for s in slots]).encode()).hexdigest()[:12]
    folder = lock_dir or os.path.join(tempfile.gettempdir(), "pipeline-engine-slots")
    os.makedirs(folder, exist_ok=True)
    for s in slots:
        f = open(os.path.join(folder, f"{layout}-{s.index}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return SlotClaim(s, f)
    logger.warning("all %d engine slots of this node are taken: sharing the cores of slot 0", len(slots))
    return SlotClaim(slots[0], None)
