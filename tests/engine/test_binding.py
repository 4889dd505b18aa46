"""Where a CPU engine's compute threads go, decided before vLLM starts (no engine needed:
`_bind_cpus` only sets the environment vLLM's processes inherit)."""

import pytest

from pipeline.config import EngineConfig
from pipeline.engine.cpus import CpuTopology, plan_engines
from pipeline.engine.engine import Engine

VARS = ("VLLM_CPU_OMP_THREADS_BIND", "PIPELINE_CPU_BIND", "OMP_NUM_THREADS")


@pytest.fixture
def clean_env(monkeypatch):
    for v in VARS:  # registered with monkeypatch, so whatever _bind_cpus sets is undone
        monkeypatch.setenv(v, "x")
        monkeypatch.delenv(v)
    return monkeypatch


def bind(cpus=None, **cfg) -> str:
    import os

    e = Engine("unused", EngineConfig(**cfg), cpus=cpus)
    e._bind_cpus()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == e.cpu_bind
    return e.cpu_bind


def test_default_binds_every_core_of_this_machine_not_vllms_auto(clean_env):
    (slot,) = plan_engines(CpuTopology.detect())
    assert bind() == slot.bind != "auto"
    assert bind() == slot.bind  # a second engine of the process: our own earlier value is no user's


def test_spec_overrides_and_an_exported_value_wins_over_the_plan(clean_env):
    assert bind(cpu_bind="auto") == "auto"
    one = plan_engines(CpuTopology.detect(), 1, 0, 1)[0].bind
    assert bind(cpu_reserved_cores=0, cpu_threads=1) == one
    assert bind(cpus=1) == one  # a Serve replica's CPUs cap its threads (serve.resources.cpus_per_replica)
    clean_env.delenv("PIPELINE_CPU_BIND")  # a fresh process, where the user exported a value
    clean_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert bind() == "0" and bind() == "0"  # theirs, for every engine of the process
    assert bind(cpu_bind="nobind") == "nobind"  # the spec beats the environment
