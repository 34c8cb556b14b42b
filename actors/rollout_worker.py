"""RolloutWorker: leases tasks, runs each task's group of trajectories, hands groups on.

Guarantees:
- A leased task ends in exactly one call: queue.complete (group accepted, or a duplicate of
  one that was), queue.drop (the sink refused the group, with its reason) or queue.fail
  (infrastructure failure or shutdown: the task goes back for another attempt).
- Leases are renewed while their group runs, so only a dead worker's leases expire.
- Every acquired slot is released, on success, error and cancellation alike.
- At most `max_trajectories` of its trajectories run at once (None: no bound but
  groups_in_flight x group_size); one waiting for its turn holds no slot and its wall-clock
  budget has not started. It leases no more groups than can run a trajectory.
- `stop()` stops leasing; groups in flight finish. `cancel()` cancels them (their leases are
  failed back to the queue, their slots released).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.sandbox_pool import CALL_SLACK, ActorSandbox, close_direct_session
from rollout.agent import AgentConfig
from rollout.leases import Lease
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.scored import ScoredGroup
from rollout.stats import WorkerStats
from rollout.tasks.base import NoSlot, sandbox_spec_for
from rollout.tasks.mix import TaskEnvs
from rollout.trace import Trace
from rollout.types import INFRA_OUTCOMES, Outcome, Task, TokenRecord, Trajectory

log = logging.getLogger(__name__)

# Outcomes that say the infrastructure failed, not the model: the group is retried, not scored.
RETRY_OUTCOMES = INFRA_OUTCOMES


@dataclass
class WorkerSettings:
    group_size: int
    groups_in_flight: int = 2
    include_messages: bool = False
    acquire_timeout: float = 300.0
    lease_renew_interval: float = 10.0
    pace_poll_interval: float = 0.5
    task_env: Any = None  # the TaskSourceConfig (every source's kind and settings)
    route_by_image: bool = False  # sharded pools: an image always goes to the same shard
    record_events: bool = True  # trajectory lines to the run's events.jsonl
    max_trajectories: int | None = None  # this worker's trajectories at once (None: no bound)

    @property
    def max_groups(self) -> int:
        """Groups worth holding at once: more would only hold leases while they wait."""
        if self.max_trajectories is None:
            return self.groups_in_flight
        return max(1, min(self.groups_in_flight, -(-self.max_trajectories // self.group_size)))


@ray.remote(num_cpus=0, max_concurrency=1024)
class RolloutWorker:
    def __init__(self, worker_id: str, settings: WorkerSettings, policy: PolicyConfig,
                 agent: AgentConfig, pools: list[Any], queue: Any, sink: Any) -> None:
        logging.basicConfig(level=logging.INFO)
        self.worker_id = worker_id
        self.s = settings
        self._policy_cfg = policy
        self._agent = agent
        self._pools = pools
        self._queue = queue
        self._sink = sink
        # The env of each task is picked by its kind (a run may mix kinds).
        self._envs = TaskEnvs(settings.task_env)
        self._policy_envs: dict[str, Any] = {}  # by kind, made on first use
        self._policy: Any = None
        self._stopping = False
        self._groups: dict[str, asyncio.Task[None]] = {}
        self._rr = hash(worker_id)
        self._stats = WorkerStats()
        # Made in run(): an asyncio primitive belongs to the loop that uses it.
        self._trajectory_gate: asyncio.Semaphore | None = None

    def stats(self) -> WorkerStats:
        return dataclasses.replace(self._stats, groups_in_flight=len(self._groups))

    def stop(self) -> None:
        self._stopping = True

    async def cancel(self) -> int:
        self._stopping = True
        tasks = list(self._groups.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def run(self) -> WorkerStats:
        """Lease and run groups until the queue is finished or `stop()` is called."""
        self._policy = make_policy(self._policy_cfg, self._envs)
        if self.s.max_trajectories is not None:
            self._trajectory_gate = asyncio.Semaphore(self.s.max_trajectories)
        try:
            while not self._stopping:
                if len(self._groups) >= self.s.max_groups:
                    await asyncio.wait(list(self._groups.values()),
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not await self._sink.may_start.remote():
                    await asyncio.sleep(self.s.pace_poll_interval)
                    continue
                leases: list[Lease] = await self._queue.lease.remote(self.worker_id, 1)
                if leases:
                    lease = leases[0]
                    self._groups[lease.lease_id] = asyncio.create_task(self._run_group(lease))
                    continue
                if self._groups:
                    await asyncio.wait(list(self._groups.values()),
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                progress = await self._queue.progress.remote()
                if progress["finished"]:
                    break
                # Other workers hold the remaining leases; theirs may come back to us.
                await asyncio.sleep(self.s.pace_poll_interval)
            if self._groups:
                await asyncio.gather(*self._groups.values(), return_exceptions=True)
        finally:
            await self._policy.close()
            await close_direct_session()
        return self.stats()

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.s.lease_renew_interval)
            lost = await self._queue.renew.remote([lease.lease_id])
            if lost:
                log.warning("lease %s of task %s was lost", lease.lease_id, lease.task.task_id)
                return

    async def _run_group(self, lease: Lease) -> None:
        task = lease.task
        renew = asyncio.create_task(self._renew(lease))
        traces: list[Trace | None] = [None] * self.s.group_size
        trajs: list[Trajectory] = []
        fate = "cancelled"
        try:
            if self.s.record_events:
                traces = [Trace("", task.task_id, attempt=lease.attempt, worker=self.worker_id,
                                image=task.image, kind=task.kind)
                          for _ in range(self.s.group_size)]
            trajs = list(await asyncio.gather(
                *(self._run_one(lease, i, traces[i]) for i in range(self.s.group_size))
            ))
            bad = [t for t in trajs if t.outcome in RETRY_OUTCOMES]
            if bad:
                # A broken task (its gold solution cannot run as given) says so in its kind.
                kind = ("task_error" if "task error:" in (bad[0].error or "")
                        else bad[0].outcome.value)
                reason = f"{kind}: {bad[0].error}"
                fate = f"retry: {reason}"
                self._stats.groups_failed += 1
                await self._queue.fail.remote(lease.lease_id, reason)
                return
            group = ScoredGroup(task=task, trajectories=list(trajs),
                                generation_params=self._generation_params())
            sent = time.monotonic()
            result = await self._sink.submit.remote(
                task.task_id, group.to_atropos(include_messages=self.s.include_messages),
                [trajectory_summary(t) for t in trajs],
            )
            fate = result
            for trace in traces:
                if trace is not None:
                    trace.add("send", sent, result=result)
            if result in ("accepted", "duplicate"):
                await self._queue.complete.remote(lease.lease_id, result)
            else:
                await self._queue.drop.remote(lease.lease_id, result)
            self._stats.groups_done += 1
            if result in ("accepted", "duplicate"):
                self._stats.kind(task.kind).groups += 1
        except asyncio.CancelledError:
            await asyncio.shield(self._queue.give_back.remote(lease.lease_id))
            raise
        except Exception as e:  # a bug or a dead actor: give the task back, keep the worker
            log.exception("group of task %s failed", task.task_id)
            self._stats.groups_failed += 1
            fate = f"retry: worker error: {type(e).__name__}: {e}"
            await self._queue.fail.remote(lease.lease_id, f"worker error: {type(e).__name__}: {e}")
        finally:
            renew.cancel()
            self._groups.pop(lease.lease_id, None)
            if trajs and fate != "cancelled" and self.s.record_events:
                await asyncio.shield(self._record(traces, trajs, fate))

    async def _record(self, traces: list[Trace | None], trajs: list[Trajectory], fate: str) -> None:
        """The group's trajectory lines to the run's event log (never fails the group)."""
        lines = [trace.to_line(**trajectory_result(t), group=fate)
                 for trace, t in zip(traces, trajs) if trace is not None]
        try:
            await asyncio.wait_for(self._sink.record.remote(lines), CALL_SLACK)
        except Exception as e:
            log.warning("trajectory events of task %s not recorded: %s", trajs[0].task_id, e)

    def _env_for(self, task: Task) -> Any:
        """The task's env as the policy sees it (`simulated` may stand in for grading)."""
        env = self._policy_envs.get(task.kind)
        if env is None:
            env = self._policy_envs[task.kind] = self._policy.task_env(self._envs.for_task(task))
        return env

    def _generation_params(self) -> dict[str, Any]:
        p = self._policy_cfg
        return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens}

    def set_pools(self, pools: list[Any]) -> None:
        """The driver's current pool list (nodes come and go)."""
        if pools:
            self._pools = list(pools)

    def _pick_pool(self, image: str | None) -> Any:
        if self.s.route_by_image:  # the shard that holds (or will start) this image's hosts
            return self._pools[shard_of(image, len(self._pools))]
        self._rr += 1
        return self._pools[self._rr % len(self._pools)]

    def _forget_pool(self, pool: Any) -> None:
        # Its node is gone; until the driver's next update, stop sending work there.
        if len(self._pools) > 1 and pool in self._pools and not self.s.route_by_image:
            self._pools.remove(pool)

    async def _run_one(self, lease: Lease, index: int, trace: Trace | None) -> Trajectory:
        if self._trajectory_gate is None:
            return await self._run_one_now(lease, index, trace)
        queued = time.monotonic()
        async with self._trajectory_gate:
            if trace is not None:  # its wall clock (and budget) start when it runs
                trace.restart(queued=round(time.monotonic() - queued, 3))
            return await self._run_one_now(lease, index, trace)

    async def _run_one_now(self, lease: Lease, index: int, trace: Trace | None) -> Trajectory:
        task = lease.task
        # Starts with the worker id: if this worker dies, the driver frees its slots by prefix.
        traj_id = f"{self.worker_id}/{task.task_id}/{lease.attempt}/{index}-{uuid.uuid4().hex[:6]}"
        if trace is not None:
            trace.trajectory_id = traj_id
        self._stats.trajectories_in_flight += 1
        slot = pool = None
        started = time.monotonic()
        try:
            env = self._env_for(task)
            spec = sandbox_spec_for(env, task)
            if spec is None:  # a task that needs no slot
                traj = await run_rollout(task, env, self._policy, NoSlot(), self._agent,
                                         trajectory_id=traj_id, trace=trace)
            else:
                pool = self._pick_pool(spec.image)
                slot = await asyncio.wait_for(
                    pool.acquire.remote(traj_id, spec.image, self.s.acquire_timeout),
                    self.s.acquire_timeout + CALL_SLACK)
                self._stats.acquire_time += time.monotonic() - started
                if trace is not None:
                    trace.add("acquire", started, waited=round(slot.waited, 4))
                traj = await run_rollout(task, env, self._policy, ActorSandbox(pool, slot),
                                         self._agent, trajectory_id=traj_id, trace=trace)
                # Queued in the pool before a slot was free: on slow remote hosts, the figure.
                traj.metadata.setdefault("timings", {})["acquire_wait"] = round(slot.waited, 4)
        except Exception as e:
            if pool is not None and isinstance(e, (RayActorError, asyncio.TimeoutError)):
                self._forget_pool(pool)
            if pool is not None and slot is None and trace is not None:
                trace.add("acquire", started, waited=None, ok=False)
            traj = Trajectory(task_id=task.task_id, trajectory_id=traj_id,
                              outcome=Outcome.SANDBOX_ERROR, record=TokenRecord(),
                              error=f"{type(e).__name__}: {e}")
        finally:
            self._stats.trajectories_in_flight -= 1
            if slot is not None:
                await asyncio.shield(_release(pool, slot))
        self._stats.count(traj, time.monotonic() - started, task.kind)
        return traj


def shard_of(image: str | None, shards: int) -> int:
    """The shard of an image: stable across processes and runs (not Python's hash)."""
    return zlib.crc32((image or "").encode()) % shards


def trajectory_result(t: Trajectory) -> dict[str, Any]:
    """What a trajectory's event line says about how it ended."""
    return {"outcome": t.outcome.value, "score": t.score, "error": t.error, "turns": t.turns,
            "tokens": len(t.record.tokens), "policy": t.metadata.get("policy"),
            "grading_error": t.metadata.get("grading_error")}


def trajectory_summary(t: Trajectory) -> dict[str, Any]:
    """What a user wants to see per trajectory in groups.jsonl (not sent to the trainer)."""
    verdict = t.metadata.get("verdict") or {}
    return {
        "trajectory_id": t.trajectory_id, "outcome": t.outcome.value, "score": t.score,
        "turns": t.turns, "tokens": len(t.record.tokens), "llm_time": round(t.llm_time, 3),
        "tool_time": round(t.tool_time, 3), "error": t.error,
        "grading": verdict.get("reason"), "timings": t.metadata.get("timings"),
        "suspected_hacking": verdict.get("suspected_hacking") or None,
    }


async def _release(pool: Any, slot: Any) -> None:
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(pool.release.remote(slot), CALL_SLACK)
    except Exception as e:  # the host may be gone; the pool has already retired it
        log.warning("release of %s failed after %.1fs: %s", slot, time.monotonic() - t0, e)

