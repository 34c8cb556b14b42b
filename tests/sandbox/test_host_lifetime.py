"""The fleet's lifetime hook (`Host.meta["retire_at"]`, used by the modal backend), with real
local slot servers: a host past its retire time gets no new lease, keeps the leases it has,
and is retired once they are released."""

from __future__ import annotations

import time

from rollout.sandbox.fleet import HostFleet
from rollout.sandbox.local import LocalBackend, LocalConfig
from rollout.sandbox.pool import SlotPool
from rollout.types import Host
from sandbox_image.config import SlotLimits

LIMITS = SlotLimits(memory_mb=256, pids=128, disk_mb=None)


class LifetimeBackend(LocalBackend):
    """Local slot servers that announce a retire time an hour ahead."""

    async def start_host(self, image: str | None, slots: int) -> Host:
        host = await super().start_host(image, slots)
        host.meta["retire_at"] = time.time() + 3600
        return host


async def test_a_host_past_its_retire_time_drains_then_retires() -> None:
    cfg = LocalConfig(min_hosts=1, max_hosts=2, slots_per_host=2, health_check_interval=3600)
    pool = SlotPool(HostFleet(LifetimeBackend(LIMITS), cfg), LIMITS)
    await pool.start()
    try:
        held = await pool.acquire("long-trajectory")
        old = pool.fleet.hosts[held.host_id]
        assert not old.draining()
        old.retire_at = time.time() - 1  # its retire time has come (instead of waiting)
        assert old.draining()
        await pool.fleet.check()
        assert held.host_id in pool.fleet.hosts  # a leased slot keeps its host
        # Its other slot is free but not handed out: a new host serves the next acquire.
        fresh = await pool.acquire("next", timeout=120)
        assert fresh.host_id != held.host_id
        result = await pool.call(held, "exec", "echo still-scoring")
        assert result.stdout == "still-scoring\n"
        await pool.release(held)
        await pool.fleet.check()
        assert held.host_id not in pool.fleet.hosts
        assert "retire time" in pool.fleet.gone[held.host_id]
        assert await pool.backend.hosts_alive([old.host]) == set()
        await pool.release(fresh)
    finally:
        await pool.stop()
