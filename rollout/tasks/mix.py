"""A run's tasks from several sources mixed by weight, and its envs keyed by `Task.kind`.

- `load_mixed(cfg)`: every source of `tasks.mixture()` loaded by its kind's loader, then
  interleaved by smooth weighted round-robin: any prefix of the result (the first
  `run.max_groups` tasks, or what the queue hands out first) holds the sources in their
  configured proportions, to within one task per source, until a source runs out; the rest
  follow in the same way. Deterministic, so a resumed run sees the same order.
- `TaskEnvs`: one env per kind, made on first use; `for_task` picks a task's env, and it
  replays `reference_solution` by kind (what the `gold` policy needs).
"""

from __future__ import annotations

import logging
from typing import Any

from rollout.protocols import TaskEnv
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.loader import LoadReport
from rollout.tasks.registry import task_kind
from rollout.types import Task, ToolCall

log = logging.getLogger(__name__)


def load_mixed(cfg: TaskSourceConfig) -> tuple[list[Task], LoadReport]:
    """All tasks of the run, interleaved by source weight; ids must be unique across sources."""
    report = LoadReport()
    streams: list[tuple[list[Task], float]] = []
    for source, weight in cfg.mixture():
        tasks, part = task_kind(source.kind).load(source)
        report.skipped.update(part.skipped)
        streams.append((tasks, weight))
    seen: set[str] = set()
    mixed: list[Task] = []
    for task in interleave(streams):
        if task.task_id in seen:
            report.skipped["duplicate task_id across sources"] += 1
            log.warning("skipped task %s of kind %s: another source has the same id",
                        task.task_id, task.kind)
            continue
        seen.add(task.task_id)
        mixed.append(task)
    report.loaded = len(mixed)
    return mixed, report


def interleave(streams: list[tuple[list[Any], float]]) -> list[Any]:
    """Smooth weighted round-robin over the streams (each consumed in order)."""
    items = [list(s) for s, _ in streams]
    weights = [w for _, w in streams]
    pos = [0] * len(items)
    credit = [0.0] * len(items)
    out: list[Any] = []
    while True:
        live = [i for i in range(len(items)) if pos[i] < len(items[i])]
        if not live:
            return out
        total = sum(weights[i] for i in live)
        for i in live:
            credit[i] += weights[i]
        pick = max(live, key=lambda i: credit[i])
        credit[pick] -= total
        out.append(items[pick][pos[pick]])
        pos[pick] += 1


class TaskEnvs:
    """The env of each task kind of a run, made once per kind from its source's config."""

    def __init__(self, cfg: TaskSourceConfig | None = None) -> None:
        self._configs = (cfg or TaskSourceConfig()).env_configs()
        self._envs: dict[str, TaskEnv] = {}

    def for_task(self, task: Task) -> TaskEnv:
        return self.get(task.kind)

    def get(self, kind: str) -> TaskEnv:
        env = self._envs.get(kind)
        if env is None:
            cfg = self._configs.get(kind)
            if cfg is None:  # a task of a kind no source named: the first source's settings
                cfg = next(iter(self._configs.values())).replace(kind=kind, sources=[])
            env = self._envs[kind] = task_kind(kind).make_env(cfg)
        return env

    def reference_solution(self, task: Task) -> list[ToolCall]:
        return self.for_task(task).reference_solution(task)
