"""Task definitions, shared by the batch pipeline and the online endpoint."""

from __future__ import annotations

from pipeline.config import TasksConfig
from pipeline.tasks.base import COMMON_COLUMNS, Completion, Task, TaskOutputError
from pipeline.tasks.sentiment import Sentiment
from pipeline.tasks.summarization import Summarization
from pipeline.tasks.translation import Translation

REGISTRY: dict[str, type[Task]] = {t.name: t for t in (Sentiment, Summarization, Translation)}


def build_tasks(cfg: TasksConfig) -> list[Task]:
    """The enabled tasks, in a fixed order (so output and prompts are deterministic)."""
    return [REGISTRY[name](task_cfg) for name, task_cfg in cfg.enabled().items()]


__all__ = ["COMMON_COLUMNS", "Completion", "Task", "TaskOutputError", "REGISTRY", "build_tasks"]
