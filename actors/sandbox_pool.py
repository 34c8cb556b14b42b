"""SandboxPool: a Ray actor owning one SlotPool, and a Sandbox that talks to it.

The actor is async with a high max_concurrency: hundreds of trajectories call it at once and
every method awaits I/O, so one actor per node serves them all on one event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import urllib.parse
import weakref
from typing import Any

import aiohttp
import ray
from ray.exceptions import RayActorError

from rollout.sandbox.config import BackendConfig
from sandbox_image.config import SlotLimits
from rollout.sandbox.client import SLOT_OPS, HostUnreachable, SlotServerClient
from rollout.sandbox.pool import SlotPool
from rollout.sandbox.slot_sandbox import SandboxOps
from rollout.types import SandboxError, Slot

log = logging.getLogger(__name__)

CALL_SLACK = 60.0  # seconds an actor call may take beyond the work it asks for


@ray.remote(max_concurrency=4096, num_cpus=0)
class SandboxPool:
    def __init__(self, cfg: BackendConfig, limits: SlotLimits, run_id: str = "",
                 quota: Any = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self._pool = SlotPool.from_config(
            cfg, limits, run_id=run_id, quota=ActorQuota(quota) if quota is not None else None)
        self._node_id = ray.get_runtime_context().get_node_id()
        self._gone: set[str] = set()  # trajectory-id prefixes of holders that died

    async def start(self) -> str:
        await self._pool.start()
        return self._node_id

    def node_id(self) -> str:
        return self._node_id

    async def acquire(self, trajectory_id: str, image: str | None, timeout: float) -> Slot:
        self._refuse_gone(trajectory_id)
        slot = await self._pool.acquire(trajectory_id, image=image, timeout=timeout)
        if self._is_gone(trajectory_id):  # its holder died while it waited for a slot
            await self._pool.release(slot)
            self._refuse_gone(trajectory_id)
        return dataclasses.replace(slot, node=self._node_id)

    async def unreachable(self, slot: Slot, error: str) -> str:
        """A holder could not reach its slot's server directly: what became of the host
        (the fleet checks it and replaces it if it died)."""
        try:
            return str(await self._pool.unreachable(slot, error))
        except SandboxError as e:  # the slot is stale already (host gone, lease ended)
            return str(e)

    def _is_gone(self, trajectory_id: str) -> bool:
        return any(trajectory_id.startswith(p) for p in self._gone)

    def _refuse_gone(self, trajectory_id: str) -> None:
        if self._is_gone(trajectory_id):
            raise SandboxError(f"{trajectory_id}: its holder is gone")

    async def release(self, slot: Slot, reset: bool = True) -> None:
        await self._pool.release(slot, reset=reset)

    async def call(self, slot: Slot, op: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """Every per-slot operation (`SLOT_OPS`), forwarded by name to the SlotPool."""
        return await self._pool.call(slot, op, *args, **kwargs)

    async def release_holder(self, prefix: str) -> int:
        """Free a dead holder's slots, and any it was still waiting for when it died."""
        self._gone.add(prefix)
        return await self._pool.release_holder(prefix)

    def stats(self) -> dict[str, Any]:
        return dict(self._pool.stats(), node_id=self._node_id)

    async def stop(self) -> None:
        await self._pool.stop()


class ActorSandbox(SandboxOps):
    """`rollout.protocols.Sandbox` over a SandboxPool actor handle and one held slot.

    Commands and files go straight to the slot's server (one HTTP hop, under the lease's
    key) when the slot came with its address and this process can reach it; the pool actor
    stays off that path. A server that does not answer is reported to the pool, which
    judges the host; the agent gets a SandboxError saying what became of it. Otherwise
    (a loopback address of another node's pool, a slot without an address) every call goes
    through the pool actor.

    A SandboxError raised in the actor arrives as one here (Ray re-raises the cause's type);
    a dead actor becomes a SandboxError too, so the agent records sandbox_error.
    """

    def __init__(self, pool: Any, slot: Slot) -> None:
        self._pool = pool
        self.slot = slot
        self._direct = (SlotServerClient.for_lease(_direct_session(), slot.url, slot.key)
                        if _reachable(slot) else None)

    @property
    def direct(self) -> bool:
        """Whether calls go straight to the slot's server (else through the pool actor)."""
        return self._direct is not None

    async def _forward(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self._direct is not None:
            if op not in SLOT_OPS:
                raise SandboxError(f"unknown slot operation {op!r}")
            try:
                return await getattr(self._direct, op)(self.slot.index, *args,
                                                       lease=self.slot.lease, **kwargs)
            except HostUnreachable as e:
                raise SandboxError(await self._report(e)) from e
        return await self._through_actor(op, *args, **kwargs)

    async def _report(self, error: Exception) -> str:
        try:
            return await asyncio.wait_for(self._pool.unreachable.remote(self.slot, str(error)),
                                          CALL_SLACK)
        except (RayActorError, asyncio.TimeoutError) as e:
            return f"{error}; the sandbox pool could not judge the host ({type(e).__name__})"

    async def _through_actor(self, op: str, *args: Any, **kwargs: Any) -> Any:
        # Bounded: a pool whose node vanished may never answer (Ray does not always fail
        # calls on a handle to an actor that died before this process learnt of it).
        timed = op in ("exec", "python")
        budget = float(kwargs.get("timeout") or 60.0) + CALL_SLACK if timed else 120.0
        try:
            return await asyncio.wait_for(
                self._pool.call.remote(self.slot, op, args, kwargs), budget)
        except SandboxError:
            raise
        except RayActorError as e:
            raise SandboxError(f"sandbox pool actor died: {e}") from e
        except asyncio.TimeoutError as e:
            raise SandboxError(f"sandbox pool did not answer {op} within {budget:.0f}s") from e


# One HTTP session per event loop for the direct calls of every ActorSandbox in it (a
# worker actor's loop, a driver's): connections to the slot servers are kept and reused.
# Idle ones are dropped before the server's own keep-alive (30 s) would close them under
# a request.
_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = \
    weakref.WeakKeyDictionary()


def _direct_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        session = _SESSIONS[loop] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=20))
    return session


async def close_direct_session() -> None:
    """Close this loop's session of direct slot calls (a worker's, at its end)."""
    session = _SESSIONS.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def _reachable(slot: Slot) -> bool:
    """Whether this process can call the slot's server itself: it has an address, and a
    loopback one only from the pool's own node."""
    if not slot.url or not slot.key:
        return False
    host = urllib.parse.urlsplit(slot.url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return bool(slot.node) and slot.node == ray.get_runtime_context().get_node_id()
    return True


class ActorQuota:
    """`HostQuota` over a `HostQuotaActor` handle (the shards' shared host budget)."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def take(self) -> bool:
        return await self._actor.take.remote()

    async def give(self) -> None:
        await self._actor.give.remote()


@ray.remote(num_cpus=0, max_concurrency=1024)
class HostQuotaActor:
    """The global host quota of a sharded backend: at most `limit` hosts across all shards."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        self.peak = max(self.peak, self.used)
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)

    def stats(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "peak": self.peak}
