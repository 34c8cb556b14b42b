"""Real SlotPools over real local slot servers (subprocesses with bubblewrap)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool


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


def slot_server_pids() -> set[int]:
    """Live slot servers this test process started: its children running `-m sandbox_image`
    (the local backend starts each as a direct child)."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(ppid) == me and state != "Z" and b"sandbox_image" in argv:
            out.add(int(entry))
    return out


def local_pool(**settings) -> SlotPool:
    """A SlotPool over the local backend; `settings` mixes fleet keys (LocalConfig) and
    slot limits (SlotLimits), as a user's backend.* and sandbox.* keys would."""
    limit_keys = set(SlotLimits.model_fields)
    limits = SlotLimits(**{k: v for k, v in settings.items() if k in limit_keys})
    cfg = LocalConfig(**{k: v for k, v in settings.items() if k not in limit_keys})
    return SlotPool.from_config(cfg, limits)


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., SlotPool]]:
    pools: list[SlotPool] = []

    def make(**overrides) -> SlotPool:
        pool = local_pool(**{"min_hosts": 1, "max_hosts": 2, "slots_per_host": 4,
                             "memory_mb": 512, "pids": 256, **overrides})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop()
