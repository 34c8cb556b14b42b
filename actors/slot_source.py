"""PoolSlots: the `SlotSource` of a RolloutWorker, over the cluster's SandboxPool actors.

Guarantees:
- A slot acquired in a session is released when the session ends, however it ends (the
  release is shielded from cancellation and bounded: a pool whose host is gone has retired
  the slot already).
- With `route_by_image` (sharded pools) an image always goes to the same shard; otherwise
  sessions go round-robin over the pools, and a pool that died or stopped answering is left
  out until the driver's next `set_pools`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from ray.exceptions import RayActorError

from actors.sandbox_pool import CALL_SLACK, ActorSandbox
from rollout.protocols import Sandbox
from rollout.tasks.base import NoSlot
from rollout.types import SandboxSpec

log = logging.getLogger(__name__)


class PoolSlots:
    def __init__(self, pools: list[Any], *, acquire_timeout: float, route_by_image: bool,
                 start: int = 0) -> None:
        self._pools = list(pools)
        self.acquire_timeout = acquire_timeout
        self.route_by_image = route_by_image
        self._rr = start

    def set_pools(self, pools: list[Any]) -> None:
        """The driver's current pool list (nodes come and go)."""
        if pools:
            self._pools = list(pools)

    @asynccontextmanager
    async def session(self, trajectory_id: str,
                      spec: SandboxSpec | None) -> AsyncIterator[Sandbox]:
        if spec is None:  # a task that needs no slot
            yield NoSlot()
            return
        pool = self._pick(spec.image)
        try:
            slot = await asyncio.wait_for(
                pool.acquire.remote(trajectory_id, spec.image, self.acquire_timeout),
                self.acquire_timeout + CALL_SLACK)
        except (RayActorError, asyncio.TimeoutError):
            self._forget(pool)
            raise
        try:
            yield ActorSandbox(pool, slot)
        except (RayActorError, asyncio.TimeoutError):
            self._forget(pool)
            raise
        finally:
            await asyncio.shield(_release(pool, slot))

    def _pick(self, image: str | None) -> Any:
        if self.route_by_image:  # the shard that holds (or will start) this image's hosts
            return self._pools[shard_of(image, len(self._pools))]
        self._rr += 1
        return self._pools[self._rr % len(self._pools)]

    def _forget(self, pool: Any) -> None:
        # Its node is gone; until the driver's next update, stop sending work there.
        if len(self._pools) > 1 and pool in self._pools and not self.route_by_image:
            self._pools.remove(pool)


def shard_of(image: str | None, shards: int) -> int:
    """The shard of an image: stable across processes and runs (not Python's hash)."""
    return zlib.crc32((image or "").encode()) % shards


async def _release(pool: Any, slot: Any) -> None:
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(pool.release.remote(slot), CALL_SLACK)
    except Exception as e:  # the host may be gone; the pool has already retired it
        log.warning("release of %s failed after %.1fs: %s", slot, time.monotonic() - t0, e)
