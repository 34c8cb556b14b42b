"""Defaults every TaskEnv may take, and the two look-ups the rollout makes on any env.

`BaseTaskEnv` offers the built-in tools (terminal, read_file, write_file) over the slot and a
slot of the task's image. An env may also give a task its own agent budget
(`wall_clock_budget(task)`, see `agent_config_for`). `tool_executor_for` / `sandbox_spec_for`
answer the same for an env
written against the older, smaller protocol (no `tool_executor` / `sandbox_spec`), so test
doubles and third-party envs keep working unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from rollout.protocols import Sandbox, TaskEnv, ToolExecutor
from rollout.agent.toolbox import with_extra_tools
from rollout.agent.tools import TOOL_SCHEMAS, SandboxTools, ToolLimits
from rollout.types import ExecResult, SandboxError, SandboxSpec, Task


class BaseTaskEnv:
    """The defaults of `rollout.protocols.TaskEnv`; an env overrides what it changes."""

    def tools(self, task: Task) -> list[dict[str, Any]]:
        return copy.deepcopy(TOOL_SCHEMAS)

    def tool_executor(self, task: Task, sandbox: Sandbox, limits: ToolLimits) -> ToolExecutor:
        return SandboxTools(sandbox, limits)

    def sandbox_spec(self, task: Task) -> SandboxSpec | None:
        return SandboxSpec(image=task.image)


def tool_executor_for(env: TaskEnv, task: Task, sandbox: Sandbox,
                      limits: ToolLimits) -> ToolExecutor:
    make = getattr(env, "tool_executor", None)
    return make(task, sandbox, limits) if make is not None else SandboxTools(sandbox, limits)


def task_toolset(env: TaskEnv, task: Task, sandbox: Sandbox,
                 run_tools: list[str] | tuple[str, ...], limits: ToolLimits,
                 executor: ToolExecutor | None = None,
                 ) -> tuple[ToolExecutor, list[dict[str, Any]]]:
    """A trajectory's tool executor (`executor`, else its kind's) and the tool schemas it
    offers: its kind's, the run's extra tools (`agent.tools`) and the task's own (its
    data's `tools`, e.g. a terminal task's environment/tools file)."""
    local = executor or tool_executor_for(env, task, sandbox, limits)
    names = task.data.get("tools") if isinstance(task.data, dict) else None
    own = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return local, with_extra_tools(env.tools(task), [*run_tools, *own])


def sandbox_spec_for(env: TaskEnv, task: Task) -> SandboxSpec | None:
    spec = getattr(env, "sandbox_spec", None)
    return spec(task) if spec is not None else SandboxSpec(image=task.image)


def task_budget(env: TaskEnv, task: Task) -> float | None:
    """The task's own wall-clock budget for the agent (an env's `wall_clock_budget`, e.g.
    a terminal task's task.toml), or None: the run's `agent.wall_clock_budget`."""
    budget = getattr(env, "wall_clock_budget", None)
    value = budget(task) if callable(budget) else None
    return float(value) if value else None


def agent_config_for(env: TaskEnv, task: Task, cfg: Any) -> Any:
    """The agent config of one trajectory: the run's, with the task's own budget if it has one."""
    budget = task_budget(env, task)
    return cfg.replace(wall_clock_budget=budget) if budget else cfg


class NoSlot:
    """The `Sandbox` of a task that needs no slot (`sandbox_spec` is None): files live in
    memory for the trajectory (a `submit` tool's answer, say); commands cannot run."""

    slot = None  # what a `SlotSource` session yields holds no slot of any pool

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def exec(self, command: str, *, timeout: float = 60.0, cwd: str | None = None,
                   env: dict[str, str] | None = None, grading: bool = False) -> ExecResult:
        return ExecResult(127, "", "this task has no sandbox: commands cannot run here")

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(f"no such file: {path}")
        data = self.files[path]
        return data if max_bytes is None else data[:max_bytes]

    async def write_file(self, path: str, data: bytes) -> None:
        self.files[path] = bytes(data)

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        raise SandboxError("this task has no sandbox: archives cannot be unpacked")
