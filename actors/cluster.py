"""Wires the actors of one run together and drives it to the end.

Guarantees:
- Placement follows the backend: `per_node` (local) has one SandboxPool per alive Ray node,
  so every node adds capacity; `sharded` (remote hosts) has `pool.shards` pools on the
  driver's node sharing one global host quota, and workers route acquires by image.
- A RolloutWorker that dies has its leases returned at once and is replaced (bounded).
- A worker's death is logged with its cause (the exception inside Ray's wrapper), once per
  distinct cause; the snapshot counts deaths by cause for the summary.
- `start()` that fails stops what it started before it raises.
- `request_stop()` stops leasing; in-flight groups get `run.shutdown_grace` seconds, then
  are cancelled once (their tasks go back to the queue for the next run). A second request
  cancels at once. Either way teardown runs: sink drained and closed, pools stopped, actors
  killed. Actors are named `<run_id>:<role>` in namespace "rollout" for inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.observe import RunObserver
from actors.rollout_worker import RolloutWorker, WorkerSettings
from actors.sandbox_pool import HostQuotaActor, SandboxPool
from actors.task_queue import TaskQueue
from actors.trainer_sink import TrainerSink
from rollout.settings.config import LaunchConfig, slot_limits
from rollout.record.stats import WorkerStats
from sandbox_image.config import SlotLimits
from rollout.trainer.sink import GroupRules, TrainerConfig
from rollout.types import Task

log = logging.getLogger(__name__)

NAMESPACE = "rollout"


@dataclass
class Snapshot:
    """What the progress view shows, polled from the actors."""

    started: float
    queue: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)
    pools: list[dict[str, Any]] = field(default_factory=list)
    workers: list[WorkerStats] = field(default_factory=list)
    worker_restarts: int = 0
    stopping: str | None = None  # why the run is stopping early (Ctrl-C, SIGTERM)
    stop_level: int = 0  # 1: grace period running, 2: cancelling
    grace_deadline: float | None = None  # time.time() when the grace period ends
    cancelled_groups: int = 0  # in-flight groups cancelled at shutdown (tasks back in queue)
    cancel_counted: bool = False  # the workers have answered how many they cancelled
    worker_deaths: dict[str, int] = field(default_factory=dict)  # cause -> deaths


class RolloutCluster:
    def __init__(self, cfg: LaunchConfig, tasks: list[Task], run_dir: Path,
                 run_id: str | None = None) -> None:
        self.cfg = cfg
        self.tasks = tasks
        self.run_dir = run_dir
        self.run_id = run_id or _stable_run_id(run_dir)
        self.pools: list[Any] = []
        self._pool_nodes: dict[str, Any] = {}  # node id -> its SandboxPool
        self._next_node_check = 0.0
        self.workers: dict[str, Any] = {}
        self._runs: dict[Any, str] = {}  # ObjectRef of worker.run() -> worker id
        self.queue: Any = None
        self.quota: Any = None  # HostQuotaActor of a sharded backend
        self.sink: Any = None
        self.snapshot = Snapshot(started=time.time())
        self.observer = RunObserver(run_dir, cfg.metrics, cfg.logger, self.run_id,
                                    redacted(cfg.model_dump(mode="json")))
        self._stop_level = 0
        self._stop_changed = asyncio.Event()
        self._worker_seq = 0

    def _name(self, role: str) -> str:
        return f"{self.run_id}:{role}"

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.teardown()  # the pools, sink and workers that did start
            if self.queue is not None:
                with contextlib.suppress(Exception):
                    ray.kill(self.queue)
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        # The queue and the sink hold the run's state and write the run dir: they live on the
        # driver's node, so the files are where the user looks and a lost worker node
        # cannot take them down.
        here = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = TaskQueue.options(name=self._name("queue"), namespace=NAMESPACE,
                                       scheduling_strategy=here).remote(
            self.tasks, str(self.run_dir / "queue_state.json"), cfg.queue.lease_seconds,
            cfg.queue.max_attempts, cfg.run.max_groups,
        )
        rules = GroupRules(
            group_size=cfg.env.group_size, batch_size=cfg.env.batch_size,
            max_batches_offpolicy=cfg.env.max_batches_offpolicy,
            max_token_length=cfg.env.max_token_length,
            ensure_scores_are_not_same=cfg.env.ensure_scores_are_not_same,
        )
        self.sink = TrainerSink.options(name=self._name("sink"), namespace=NAMESPACE,
                                        scheduling_strategy=here).remote(
            str(self.run_dir), self._trainer_config(), rules, cfg.metrics.enabled
        )
        await asyncio.gather(self.sink.start.remote(), self._add_pools())
        await self.observer.start(self.sink)
        log.info("run %s: %d sandbox pool(s), %d task(s) queued",
                 self.run_id, len(self.pools), len(self.tasks))
        for _ in range(cfg.workers.num):
            self._spawn_worker()

    def _trainer_config(self) -> TrainerConfig:
        """The trainer section with the env.* settings Atropos registers the env under
        (a new object: the run's config is never changed)."""
        env = self.cfg.env
        return self.cfg.trainer.replace(env_name=env.name, weight=env.weight,
                                        min_batch_allocation=env.min_batch_allocation)

    def _limits(self) -> SlotLimits:
        return slot_limits(self.cfg)

    @property
    def sharded(self) -> bool:
        return self.cfg.backend.placement == "sharded"

    async def _add_pools(self) -> bool:
        if self.sharded:
            return await self._add_shards()
        return await self._add_node_pools()

    async def _add_shards(self) -> bool:
        """`pool.shards` pools on the driver's node, one global host quota between them."""
        if self.pools:
            return False
        here = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.quota = HostQuotaActor.options(
            name=self._name("host-quota"), namespace=NAMESPACE,
            scheduling_strategy=here).remote(self.cfg.backend.max_hosts)
        shards = [SandboxPool.options(name=self._name(f"pool-shard{i}"), namespace=NAMESPACE,
                                      scheduling_strategy=here)
                  .remote(self.cfg.backend, self._limits(), f"{self.run_id}-{i}", self.quota)
                  for i in range(self.cfg.pool.shards)]
        started = await _settle([p.start.remote() for p in shards],
                                self.cfg.backend.host_start_timeout + 30)
        failed = [r for r in started if isinstance(r, Exception)]
        if failed:
            for p in shards:
                ray.kill(p)
            raise RuntimeError(f"sandbox pool shard failed to start: {cause_of(failed[0])}")
        self.pools = shards
        return True

    async def _add_node_pools(self) -> bool:
        """Start a SandboxPool on every alive node that has none. True if any was added."""
        new = []
        for node in ray.nodes():
            nid = node["NodeID"]
            if not node.get("Alive") or nid in self._pool_nodes:
                continue
            strategy = NodeAffinitySchedulingStrategy(node_id=nid, soft=False)
            pool = SandboxPool.options(
                name=self._name(f"pool-{nid[:8]}"), namespace=NAMESPACE,
                scheduling_strategy=strategy,
            ).remote(self.cfg.backend, self._limits(), f"{self.run_id}-{nid[:8]}")
            new.append((nid, pool))
        started = await _settle([p.start.remote() for _, p in new],
                                self.cfg.backend.host_start_timeout + 30)
        failed: list[str] = []
        for (nid, pool), result in zip(new, started):
            if isinstance(result, Exception):
                failed.append(cause_of(result))
                log.error("sandbox pool on node %s failed to start: %s", nid[:8], failed[-1])
                ray.kill(pool)
                continue
            self._pool_nodes[nid] = pool
            self.pools.append(pool)
            log.info("sandbox pool on node %s is up", nid[:8])
        if not self.pools:
            raise RuntimeError("no sandbox pool could start: "
                               + (failed[0] if failed else "the Ray cluster has no alive node"))
        return any(nid in self._pool_nodes for nid, _ in new)

    async def _watch_nodes(self, force: bool = False) -> None:
        """Follow the cluster: pools for new nodes, none for dead ones; tell the workers."""
        if self.sharded or (not force and time.monotonic() < self._next_node_check):
            return
        self._next_node_check = time.monotonic() + 5.0
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        gone = [nid for nid in self._pool_nodes if nid not in alive]
        for nid in gone:
            log.warning("node %s is gone; dropping its sandbox pool", nid[:8])
            pool = self._pool_nodes.pop(nid)
            self.pools.remove(pool)
        added = await self._add_pools() if alive - set(self._pool_nodes) else False
        if gone or added:
            await _settle([w.set_pools.remote(self.pools) for w in self.workers.values()], 30)

    def _spawn_worker(self) -> None:
        cfg = self.cfg
        wid = f"worker-{self._worker_seq}"
        self._worker_seq += 1
        settings = WorkerSettings(
            group_size=cfg.env.group_size, groups_in_flight=cfg.workers.groups_in_flight,
            include_messages=cfg.env.include_messages,
            acquire_timeout=cfg.workers.acquire_timeout,
            lease_renew_interval=cfg.workers.lease_renew_interval,
            task_env=cfg.tasks, route_by_image=self.sharded,
            record_events=cfg.metrics.enabled,
            max_trajectories=cfg.workers.per_worker_trajectories(),
        )
        worker = RolloutWorker.options(
            name=self._name(wid), namespace=NAMESPACE, scheduling_strategy="SPREAD",
        ).remote(wid, settings, cfg.policy, cfg.agent, self.pools, self.queue, self.sink)
        self.workers[wid] = worker
        self._runs[worker.run.remote()] = wid

    # -- run --------------------------------------------------------------------------------

    def request_stop(self, why: str = "stop requested") -> None:
        self._stop_level += 1
        self.snapshot.stop_level = min(self._stop_level, 2)
        self.snapshot.stopping = why if self._stop_level == 1 else f"{why} (forced)"
        if self._stop_level == 1:
            log.warning("%s: no new groups; in-flight groups get %.0fs to finish "
                        "(Ctrl-C again to cancel them)", why, self.cfg.run.shutdown_grace)
        else:
            log.warning("%s again: cancelling in-flight groups", why)
        self._stop_changed.set()

    async def run(self, on_tick: Callable[[Snapshot], None] | None = None,
                  tick: float = 0.5) -> Snapshot:
        """Run until the queue is finished or a stop is requested; always tears down."""
        try:
            await self._drive(on_tick, tick)
        finally:
            await self.teardown()
            await self._poll(final=True)
            if self.queue is not None:
                # a final snapshot of the cursor (its journal already holds every change)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.queue.close.remote(), 30)
                ray.kill(self.queue)
            await self.observer.close(self.snapshot)
            if on_tick:
                on_tick(self.snapshot)
        return self.snapshot

    async def _drive(self, on_tick: Callable[[Snapshot], None] | None, tick: float) -> None:
        max_restarts = 3 * self.cfg.workers.num
        graceful_sent = cancel_at = None
        while self._runs:
            done, _ = ray.wait(list(self._runs), num_returns=len(self._runs), timeout=0)
            for ref in done:
                wid = self._runs.pop(ref)
                try:
                    await ref
                except Exception as e:  # the worker actor died
                    self._worker_died(wid, e)
                    self.workers.pop(wid, None)
                    n = await self.queue.release_holder.remote(wid, f"{wid} died")
                    freed = await _settle(
                        [p.release_holder.remote(f"{wid}/") for p in self.pools], 60)
                    slots = sum(x for x in freed if isinstance(x, int))
                    log.info("%d lease(s) of %s back in the queue, %d slot(s) freed",
                             n, wid, slots)
                    if not self._stop_level and self.snapshot.worker_restarts < max_restarts:
                        self.snapshot.worker_restarts += 1
                        # A worker often dies with its node: drop that node's pool first so
                        # the replacement is not handed a dead pool.
                        await self._watch_nodes(force=True)
                        self._spawn_worker()
            if self._stop_level and graceful_sent is None:
                graceful_sent = time.monotonic()
                cancel_at = graceful_sent + self.cfg.run.shutdown_grace
                self.snapshot.grace_deadline = time.time() + self.cfg.run.shutdown_grace
                await _settle([w.stop.remote() for w in self.workers.values()], 30)
            if cancel_at != float("inf") and (
                    self._stop_level >= 2 or (cancel_at is not None and time.monotonic() > cancel_at)):
                cancel_at = float("inf")  # once: teardown cancels anything left after
                self.snapshot.stop_level = 2
                log.warning("cancelling groups still in flight")
                self._count_cancelled(
                    await _settle([w.cancel.remote() for w in self.workers.values()], 60))
            if not self._stop_level:
                await self._watch_nodes()
            await self._poll()
            self.observer.tick(self.snapshot)
            if on_tick:
                on_tick(self.snapshot)
            self._stop_changed.clear()
            try:
                await asyncio.wait_for(self._stop_changed.wait(), tick)
            except asyncio.TimeoutError:
                pass

    async def _poll(self, final: bool = False) -> None:
        async def safe(ref: Any) -> Any:
            try:
                return await asyncio.wait_for(ref, 10)
            except Exception:  # a busy or dead actor: keep the last known figures
                return None

        s = self.snapshot
        if self.queue is not None:
            s.queue = await safe(self.queue.progress.remote()) or s.queue
        if self.sink is not None and not final:
            s.sink = await safe(self.sink.stats.remote()) or s.sink
        if not final:
            pools = await asyncio.gather(*(safe(p.stats.remote()) for p in self.pools))
            s.pools = [p for p in pools if p]
        workers = await asyncio.gather(*(safe(w.stats.remote()) for w in self.workers.values()))
        s.workers = [w for w in workers if w] or s.workers

    def _worker_died(self, wid: str, error: BaseException) -> None:
        """Say why, once per cause: a cause that kills every replacement too (a bad policy
        config, say) would otherwise fill the screen with the same wrapper name."""
        why = cause_of(error)
        seen = self.snapshot.worker_deaths
        seen[why] = seen.get(why, 0) + 1
        if seen[why] == 1:
            log.error("%s died: %s; returning its leases", wid, why)
        else:
            log.error("%s died (the same cause, %d times now); returning its leases",
                      wid, seen[why])

    # -- teardown ---------------------------------------------------------------------------

    async def teardown(self) -> None:
        """The one teardown path. Safe to call twice; shielded from cancellation."""
        await asyncio.shield(self._teardown())

    def _count_cancelled(self, results: list[Any]) -> None:
        self.snapshot.cancelled_groups += sum(r for r in results if isinstance(r, int))
        self.snapshot.cancel_counted = True

    async def _teardown(self) -> None:
        self._count_cancelled(
            await _settle([w.cancel.remote() for w in self.workers.values()], 60))
        if self.sink is not None:
            try:
                self.snapshot.sink = await self.sink.close.remote(
                    min(30.0, self.cfg.run.shutdown_grace)
                )
            except Exception as e:
                log.error("closing the trainer sink failed: %s", e)
        await _settle([p.stop.remote() for p in self.pools], 60)
        for actor in [*self.workers.values(), *self.pools, self.sink, self.quota]:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
        self.workers.clear()


SECRET_KEYS = {"env", "secrets", "token"}  # free-form maps that may hold credentials


def redacted(config: Any, top: bool = True) -> Any:
    """The config for an experiment logger, without values that may be credentials (the
    top-level `env` is Atropos's env section, not an environment)."""
    if isinstance(config, dict):
        return {k: "<redacted>" if k in SECRET_KEYS and v and not (top and k == "env")
                else redacted(v, False) for k, v in config.items()}
    if isinstance(config, list):
        return [redacted(v, False) for v in config]
    return config


def _stable_run_id(run_dir: Path) -> str:
    """The run's id, kept in the run dir: a resumed run has the same id, so a backend can
    adopt the hosts it left running (and tell them from other runs' leftovers)."""
    path = run_dir / "run_id"
    try:
        existing = path.read_text().strip()
    except OSError:
        existing = ""
    if existing.isalnum() and len(existing) <= 32:
        return existing
    run_id = uuid.uuid4().hex[:8]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    except OSError as e:
        log.warning("cannot record the run id in %s: %s", path, e)
    return run_id


def cause_of(error: BaseException) -> str:
    """One line saying what went wrong: the exception a Ray wrapper (RayTaskError) carries,
    as `Type: first line of its message` (our own errors' and RuntimeError's message alone;
    a bare type when the message is empty, as a timeout's is)."""
    seen = set()
    while isinstance(getattr(error, "cause", None), BaseException) and id(error) not in seen:
        seen.add(id(error))  # RayTaskError(X).cause is the X the task raised
        error = error.cause  # type: ignore[attr-defined]
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    name = type(error).__name__
    if not lines:
        return name
    # Our own errors' messages say it all; another library's type name tells what failed.
    own = type(error) is RuntimeError or type(error).__module__.split(".")[0] in (
        "rollout", "actors", "sandbox_image")
    return lines[0] if own else f"{name}: {lines[0]}"


async def _settle(refs: list[Any], timeout: float) -> list[Any]:
    """Await actor calls, each bounded by `timeout`; failures come back as exceptions.

    The driver must never hang on an actor whose node vanished without Ray noticing yet.
    """
    async def one(ref: Any) -> Any:
        return await asyncio.wait_for(ref, timeout)

    return await asyncio.gather(*(one(r) for r in refs), return_exceptions=True)
