"""RolloutWorker: leases tasks, hands each to `rollout.group.generate_group` (which runs the
group, its slots through `actors.slot_source.PoolSlots`), and reports the group to the sink
and the queue.

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
from dataclasses import dataclass
from typing import Any

import ray

from actors.sandbox_pool import CALL_SLACK, close_direct_session
from actors.slot_source import PoolSlots
from rollout.agent.loop import AgentConfig
from rollout.group import GroupSetup, generate_group
from rollout.leases import Lease
from rollout.policy import PolicyConfig, make_policy
from rollout.scored import ScoredGroup
from rollout.record.stats import WorkerStats
from rollout.tasks.mix import TaskEnvs

log = logging.getLogger(__name__)


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
        self._queue = queue
        self._sink = sink
        self._slots = PoolSlots(pools, acquire_timeout=settings.acquire_timeout,
                                route_by_image=settings.route_by_image, start=hash(worker_id))
        # The env of each task is picked by its kind (a run may mix kinds).
        self._envs = TaskEnvs(settings.task_env)
        self._stopping = False
        self._groups: dict[str, asyncio.Task[None]] = {}
        self._stats = WorkerStats()
        self._setup: GroupSetup | None = None  # made in run(), with the policy

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
        policy = make_policy(self._policy_cfg, self._envs)
        self._setup = GroupSetup(
            policy=policy, envs=self._envs, agent=self._agent, slots=self._slots,
            group_size=self.s.group_size, holder=self.worker_id,
            record_events=self.s.record_events, stats=self._stats,
            # An asyncio primitive belongs to the loop that uses it: made here, not in __init__.
            gate=(asyncio.Semaphore(self.s.max_trajectories)
                  if self.s.max_trajectories is not None else None),
            generation_params=self._generation_params())
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
            await policy.close()
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
        renew = asyncio.create_task(self._renew(lease))
        group: ScoredGroup | None = None
        fate = "cancelled"
        try:
            group = await generate_group(lease.task, self._setup, attempt=lease.attempt)
            fate = await self._report(lease, group)
        except asyncio.CancelledError:
            await asyncio.shield(self._queue.give_back.remote(lease.lease_id))
            raise
        except Exception as e:  # a bug or a dead actor: give the task back, keep the worker
            log.exception("group of task %s failed", lease.task.task_id)
            self._stats.groups_failed += 1
            fate = f"retry: worker error: {type(e).__name__}: {e}"
            await self._queue.fail.remote(lease.lease_id, f"worker error: {type(e).__name__}: {e}")
        finally:
            renew.cancel()
            self._groups.pop(lease.lease_id, None)
            if group is not None and fate != "cancelled" and self.s.record_events:
                # The trajectory lines to the run's event log (never fails the group).
                record = self._sink.record.remote(group.event_lines(fate))
                try:
                    await asyncio.shield(asyncio.wait_for(record, CALL_SLACK))
                except Exception as e:
                    log.warning("trajectory events of task %s not recorded: %s",
                                lease.task.task_id, e)

    async def _report(self, lease: Lease, group: ScoredGroup) -> str:
        """Tell the queue (and, for a group really graded, the sink) how the group ended;
        the fate its trajectory lines carry."""
        reason = group.retry_reason
        if reason is not None:  # the infrastructure failed, not the model: never scored
            self._stats.groups_failed += 1
            await self._queue.fail.remote(lease.lease_id, reason)
            return f"retry: {reason}"
        sent = time.monotonic()
        result = await self._sink.submit.remote(
            lease.task.task_id, group.to_atropos(include_messages=self.s.include_messages),
            group.summaries())
        group.note_sent(sent, result)
        if result in ("accepted", "duplicate"):
            await self._queue.complete.remote(lease.lease_id, result)
            self._stats.kind(lease.task.kind).groups += 1
        else:
            await self._queue.drop.remote(lease.lease_id, result)
        self._stats.groups_done += 1
        return result

    def _generation_params(self) -> dict[str, Any]:
        p = self._policy_cfg
        return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens}

    def set_pools(self, pools: list[Any]) -> None:
        """The driver's current pool list (nodes come and go)."""
        self._slots.set_pools(pools)
