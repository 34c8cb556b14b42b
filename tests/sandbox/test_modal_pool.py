"""SlotPools over the modal backend (fake SDK, real slot servers): creation rate and starting
cap under a burst, a sandbox terminated mid-run, and lifetimes (no lease outlives its
sandbox's timeout)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rollout.sandbox.pool import SlotPool
from rollout.types import SandboxError
from sandbox_image.config import SlotLimits
from tests.fake_modal import _control
from tests.sandbox.modal_support import fake_modal, modal_config, new_run_id  # noqa: F401

LIMITS = SlotLimits(memory_mb=256, pids=128, disk_mb=None)


def modal_pool(**overrides: Any) -> tuple[SlotPool, str]:
    run = new_run_id()
    cfg = modal_config(**{"min_hosts": 0, "idle_scale_down": 600.0, **overrides})
    return SlotPool.from_config(cfg, LIMITS, run_id=f"{run}-0"), run


def record_host_ups(pool: SlotPool) -> dict[str, float]:
    """When each host joined the pool (wall clock, as the fake's records are)."""
    ups: dict[str, float] = {}
    host_up = pool.host_up

    def recording(hs: Any) -> None:
        ups[hs.host_id] = time.time()
        host_up(hs)

    pool.host_up = recording  # type: ignore[method-assign]
    return ups


async def test_burst_of_200_acquires_respects_rate_and_starting_cap(
        fake_modal) -> None:  # noqa: F811
    rate, burst, cap = 6.0, 3, 5
    pool, run = modal_pool(start_rate=rate, start_burst=burst, max_starting=cap,
                           slots_per_host=10, max_hosts=20, acquire_timeout=600.0)
    ups = record_host_ups(pool)
    _control.set_faults(throttle_next=4)  # the first creations are refused, then retried
    await pool.start()
    try:
        slots = await asyncio.gather(*(pool.acquire(f"t{i}") for i in range(200)))
        assert len({(s.host_id, s.index) for s in slots}) == 200
        created = sorted(_control.creations(), key=lambda c: c["t"])
        assert len(created) == 20 == len(ups)
        times = [c["t"] for c in created]
        # Leaky bucket: any run of creations from i to j fits burst + rate * elapsed (one
        # creation of slack for the limiter's and the fake's clocks being read apart).
        for i in range(len(times)):
            for j in range(i, len(times)):
                assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1, (i, j)
        # Starting cap: at each creation, sandboxes created and not yet joined <= cap.
        for c in created:
            starting = sum(1 for d in created if d["t"] <= c["t"] < ups[d["id"]])
            assert starting <= cap
        assert _control.Faults.load().throttle_next == 0
        await asyncio.gather(*(pool.release(s, reset=False) for s in slots))
    finally:
        await pool.stop()
    assert _control.running_ids(run_id=run) == set()


async def test_sandbox_terminated_mid_run_fails_its_holder_and_is_replaced(
        fake_modal) -> None:  # noqa: F811
    pool, run = modal_pool(min_hosts=2, max_hosts=2, slots_per_host=2,
                           health_check_interval=0.5)
    await pool.start()
    try:
        slot = await pool.acquire("victim")
        other = await pool.acquire("bystander")
        if other.host_id == slot.host_id:  # want the bystander on the other host
            spare = await pool.acquire("spare")
            await pool.release(other)
            other = spare
        before = await pool.call(slot, "exec", "echo before")
        assert before.stdout == "before\n", before
        await asyncio.to_thread(_control.signal_supervisor, slot.host_id)
        with pytest.raises(SandboxError):
            await pool.call(slot, "exec", "echo after", timeout=10)
        # The bystander on the surviving host is untouched.
        fine = await pool.call(other, "exec", "echo fine")
        assert fine.stdout == "fine\n", (fine, other, slot)
        # A replacement joins; new acquires land on live hosts.
        fresh = await pool.acquire("next", timeout=120)
        assert fresh.host_id not in (slot.host_id,)
        assert (await pool.call(fresh, "exec", "echo new")).stdout == "new\n"
        assert pool.stats()["replacements"] >= 1
        assert len(_control.running_ids(run_id=run)) == 2
    finally:
        await pool.stop()
    assert _control.running_ids(run_id=run) == set()


async def test_no_lease_outlives_its_sandbox(fake_modal) -> None:  # noqa: F811
    timeout, reserve = 6, 3.0
    pool, run = modal_pool(min_hosts=1, max_hosts=2, slots_per_host=2, timeout=timeout,
                           lease_reserve=reserve, health_check_interval=0.25)
    await pool.start()
    spans: list[tuple[str, float, float]] = []
    try:
        for i in range(10):  # ~2 s trajectories, back to back, over several lifetimes
            slot = await pool.acquire(f"t{i}", timeout=180)
            began = time.time()
            result = await pool.call(slot, "exec", "sleep 2; echo scored")
            assert result.stdout == "scored\n"
            spans.append((slot.host_id, began, time.time()))
            await pool.release(slot)
    finally:
        await pool.stop()
    hosts = {h for h, _, _ in spans}
    assert len(hosts) >= 2, "hosts were never retired before their timeout"
    for host_id, began, ended in spans:
        spec = _control.read_json(_control.sandbox_path(host_id, ".json"))
        assert began < spec["created_at"] + timeout - reserve  # leased before retire_at
        assert ended < spec["created_at"] + timeout  # done before the sandbox's end
        assert _control.exit_record(host_id)["reason"] != "timeout"
    assert _control.running_ids(run_id=run) == set()
