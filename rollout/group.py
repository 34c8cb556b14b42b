"""One group: `group_size` trajectories of one task, run at once, each in its own sandbox.

`generate_group(task, setup)` -> `ScoredGroup`. No Ray here: the cluster's RolloutWorker
passes a `SlotSource` over its SandboxPool actors (actors/slot_source.py), tests and replay
one over a local SlotPool (`LocalSlots`).

Guarantees:
- Every trajectory ends as a `Trajectory`: a slot that cannot be had, a sandbox, policy or
  grading failure is its outcome (`rollout.rollout.run_rollout`), never an exception. Only
  cancellation propagates.
- Every slot is released, on success, error and cancellation alike (the session's promise).
- A task that needs no slot runs through the same session (it yields a `NoSlot`).
- At most `setup.gate` trajectories run at once (None: no bound); one waiting for its turn
  holds no slot, and its wall clock (trace and budget) starts when it runs.
- A group with an infrastructure outcome says so (`ScoredGroup.retry_reason`): it is retried
  or dropped by the caller, never scored 0.0.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from rollout.agent.loop import AgentConfig
from rollout.protocols import Sandbox, SlotSource, TaskEnv
from rollout.rollout import run_rollout
from rollout.sandbox import SlotPool
from rollout.scored import ScoredGroup
from rollout.record.stats import WorkerStats
from rollout.tasks.base import NoSlot, sandbox_spec_for
from rollout.tasks.mix import TaskEnvs
from rollout.record.trace import Trace
from rollout.types import Outcome, SandboxSpec, Task, TokenRecord, Trajectory

log = logging.getLogger(__name__)


@dataclass
class GroupSetup:
    """What every group of one holder (a worker, a test, a replay) is generated with."""

    policy: Any  # a TokenPolicy: `task_env(env)` is the env as this policy sees it
    envs: TaskEnvs
    agent: AgentConfig
    slots: SlotSource
    group_size: int
    # Trajectory ids start with it: a dead worker's slots are freed by this prefix.
    holder: str = "local"
    record_events: bool = True  # a Trace per trajectory, for the run's events.jsonl
    gate: asyncio.Semaphore | None = None  # the holder's trajectories at once
    stats: WorkerStats = field(default_factory=WorkerStats)
    generation_params: dict[str, Any] = field(default_factory=dict)
    # Each kind's env as the policy sees it (`simulated` may stand in for grading).
    policy_envs: dict[str, TaskEnv] = field(default_factory=dict, repr=False)


async def generate_group(task: Task, setup: GroupSetup, *, attempt: int = 0) -> ScoredGroup:
    """Run the task's group; the group's fate (sent, retried) is the caller's to decide from
    `retry_reason` and the sink's answer."""
    runs = await asyncio.gather(
        *(run_trajectory(task, setup, attempt, i) for i in range(setup.group_size)))
    return ScoredGroup(task=task, trajectories=[traj for traj, _ in runs],
                       generation_params=dict(setup.generation_params),
                       traces=[trace for _, trace in runs])


async def run_trajectory(task: Task, setup: GroupSetup, attempt: int,
                         index: int) -> tuple[Trajectory, Trace | None]:
    """One trajectory of the group, once the gate lets it run, and its trace."""
    if setup.gate is None:
        return await _run(task, setup, attempt, index, {})
    queued = time.monotonic()
    async with setup.gate:  # its wall clock (trace and budget) starts when it runs
        return await _run(task, setup, attempt, index,
                          {"queued": round(time.monotonic() - queued, 3)})


async def _run(task: Task, setup: GroupSetup, attempt: int, index: int,
               info: dict[str, Any]) -> tuple[Trajectory, Trace | None]:
    traj_id = f"{setup.holder}/{task.task_id}/{attempt}/{index}-{uuid.uuid4().hex[:6]}"
    stats = setup.stats
    stats.trajectories_in_flight += 1
    started = time.monotonic()
    spec: SandboxSpec | None = None
    trace: Trace | None = None
    held = False
    try:
        kind_env = setup.envs.for_task(task)
        spec = sandbox_spec_for(kind_env, task)  # the kind's slot, whoever grades it
        env = setup.policy_envs.get(task.kind)
        if env is None:
            env = setup.policy_envs[task.kind] = setup.policy.task_env(kind_env)
        if setup.record_events:
            trace = Trace(traj_id, task.task_id, attempt=attempt, worker=setup.holder,
                          image=task.image, kind=task.kind, **info)
        async with setup.slots.session(traj_id, spec) as sandbox:
            held = True
            slot = sandbox.slot
            if slot is not None:
                stats.acquire_time += time.monotonic() - started
                if trace is not None:
                    trace.add("acquire", started, waited=round(slot.waited, 4))
            traj = await run_rollout(task, env, setup.policy, sandbox, setup.agent,
                                     trajectory_id=traj_id, trace=trace)
        if slot is not None:  # queued in the pool before a slot was free
            traj.metadata.setdefault("timings", {})["acquire_wait"] = round(slot.waited, 4)
    except Exception as e:  # no slot (none free in time, a dead pool), or a bug around it
        if spec is not None and not held and trace is not None:
            trace.add("acquire", started, waited=None, ok=False)
        traj = Trajectory(task_id=task.task_id, trajectory_id=traj_id,
                          outcome=Outcome.SANDBOX_ERROR, record=TokenRecord(),
                          error=f"{type(e).__name__}: {e}")
    finally:
        stats.trajectories_in_flight -= 1
    stats.count(traj, time.monotonic() - started, task.kind)
    return traj, trace


class LocalSlots:
    """`SlotSource` over a local SlotPool (tests, replay; no Ray)."""

    def __init__(self, pool: SlotPool, acquire_timeout: float | None = None) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def session(self, trajectory_id: str,
                      spec: SandboxSpec | None) -> AsyncIterator[Sandbox]:
        if spec is None:  # a task that needs no slot (its tools keep files in memory)
            yield NoSlot()
            return
        async with self.pool.session(trajectory_id, spec.image,
                                     timeout=self.acquire_timeout) as sandbox:
            yield sandbox
