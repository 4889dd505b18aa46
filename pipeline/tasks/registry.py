"""The one place a task is declared. Adding a task: write its module (config model, Task
subclass with prompt, sampling, parse and columns) and list its class here; the job
config (`TasksConfig`), the CLI flags and the Serve routes are derived from this table."""

from __future__ import annotations

from pipeline.tasks.base import Task
from pipeline.tasks.chat import Chat
from pipeline.tasks.sentiment import Sentiment
from pipeline.tasks.summarization import Summarization
from pipeline.tasks.translation import Translation

# In the fixed order tasks run and are listed in.
TASKS: dict[str, type[Task]] = {t.name: t for t in (Sentiment, Summarization, Translation, Chat)}
