"""Task kinds by name: `Task.kind` finds its env, its loader and `tasks.kind` its settings
model here, never an if-chain.

A kind's module calls `register(TaskKind(...))` at import. Built-in kinds are imported on
first use, so a kind's dependencies are only needed when a run has tasks of that kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.protocols import TaskEnv

if TYPE_CHECKING:
    from rollout.types import Task

# The registry sits below the task-source config (tasks/config.py resolves a kind's settings
# model here) and the loader, so their types are named, not imported: `Source` is a
# `TaskSourceConfig` (or the kind's subclass of it), `Report` a loader `LoadReport`.
Source = Any
Report = Any

# kind -> module that registers it when imported.
BUILTIN = {"swe_smith": "rollout.tasks.swe_smith", "terminal": "rollout.tasks.terminal",
           "math_repl": "rollout.tasks.math", "math": "rollout.tasks.math"}


@dataclass(frozen=True)
class TaskKind:
    """One kind of task: how to load its rows, the env that runs them, and its settings
    model (a `TaskSourceConfig` subclass with the `tasks.*` keys only this kind reads, its
    lease budget and the host paths its slots need; None: the common settings only)."""

    name: str
    make_env: Callable[[Source], TaskEnv]
    load: Callable[[Source], tuple[list[Task], Report]]
    settings: type[Source] | None = None


_REGISTRY: dict[str, TaskKind] = {}


class UnknownTaskKind(ValueError):
    pass


def register(kind: TaskKind) -> TaskKind:
    _REGISTRY[kind.name] = kind
    return kind


def names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def task_kind(name: str) -> TaskKind:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskKind(f"unknown task kind {name!r}; known kinds: {names()}") from None
