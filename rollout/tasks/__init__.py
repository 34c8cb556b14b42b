"""Task sources and task environments.

The launcher calls `load_tasks(cfg)` for the normalized `Task`s (every source of
`tasks.sources`, mixed by weight) and workers take a task's `TaskEnv` (prompt, tools, slot,
preparation, grading) from the registry by `Task.kind` (`make_env(kind, cfg)`, or
`rollout.tasks.mix.TaskEnvs` for all kinds of a run).
"""

from __future__ import annotations

from typing import Any, Mapping

from rollout.protocols import TaskEnv
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.loader import LoadReport, load_tasks_with_report, row_to_task
from rollout.tasks.mix import load_mixed
from rollout.tasks.registry import task_kind
from rollout.types import Task

__all__ = ["TaskSourceConfig", "LoadReport", "load_tasks", "load_tasks_with_report",
           "make_env", "row_to_task"]


def load_tasks(cfg: TaskSourceConfig | Mapping[str, Any] | None = None) -> list[Task]:
    """Load the run's tasks: each source (`tasks.sources`, or the section itself: bundled, a
    JSONL/JSON/parquet file, a directory, an HF dataset) by its kind's loader, mixed by weight."""
    return load_mixed(TaskSourceConfig.from_mapping(cfg))[0]


def make_env(kind: str, cfg: TaskSourceConfig | Mapping[str, Any] | None = None) -> TaskEnv:
    """The TaskEnv for a task kind (see `rollout.tasks.registry.names()`)."""
    return task_kind(kind).make_env(TaskSourceConfig.from_mapping(cfg))
