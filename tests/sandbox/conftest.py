"""Real SlotPools over real local slot servers (subprocesses with bubblewrap)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest

from rollout.sandbox import LocalBackend, PoolConfig, SlotPool


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., SlotPool]]:
    pools: list[SlotPool] = []

    def make(**overrides) -> SlotPool:
        cfg = PoolConfig(**{"min_hosts": 1, "max_hosts": 2, "slots_per_host": 4,
                            "memory_mb": 512, "pids": 256, **overrides})
        pool = SlotPool(LocalBackend(cfg), cfg)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop()
