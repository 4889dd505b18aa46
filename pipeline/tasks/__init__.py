"""Task definitions and their execution, shared by the batch pipeline and the online endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.tasks.base import COMMON_COLUMNS, Completion, Task, TaskConfig, TaskInputError, TaskOutputError
from pipeline.tasks.registry import TASKS

if TYPE_CHECKING:
    from pipeline.config import TasksConfig

REGISTRY = TASKS  # name -> Task class


def build_tasks(cfg: "TasksConfig") -> list[Task]:
    """The enabled tasks, in a fixed order (so output and prompts are deterministic)."""
    return [TASKS[name](task_cfg) for name, task_cfg in cfg.enabled().items()]


__all__ = ["COMMON_COLUMNS", "Completion", "Task", "TaskConfig", "TaskInputError", "TaskOutputError", "REGISTRY", "TASKS", "build_tasks"]
