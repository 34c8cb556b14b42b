"""Task sources and task environments.

The launcher calls `load_tasks(cfg)` for the normalized `Task`s and `make_env(kind, cfg)` for
the `TaskEnv` that prompts, prepares and grades them.
"""

from __future__ import annotations

from typing import Any, Mapping

from rollout.protocols import TaskEnv
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.loader import LoadReport, load_tasks_with_report, row_to_task
from rollout.tasks.loader import load_tasks as _load_tasks
from rollout.types import Task

__all__ = ["TaskSourceConfig", "LoadReport", "load_tasks", "load_tasks_with_report",
           "make_env", "row_to_task"]


def load_tasks(cfg: TaskSourceConfig | Mapping[str, Any] | None = None) -> list[Task]:
    """Load tasks from `cfg.source` (bundled, a JSONL/JSON/parquet file, or an HF dataset)."""
    return _load_tasks(TaskSourceConfig.from_mapping(cfg))


def make_env(kind: str, cfg: TaskSourceConfig | Mapping[str, Any] | None = None) -> TaskEnv:
    """The TaskEnv for a task kind. Known kinds: "swe_smith"."""
    if kind == "swe_smith":
        from rollout.tasks.swe_smith import SweSmithEnv

        return SweSmithEnv(TaskSourceConfig.from_mapping(cfg))
    raise ValueError(f"unknown task kind {kind!r}; known kinds: ['swe_smith']")
