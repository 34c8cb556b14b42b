"""HostFleet guarantees: start rate and starting cap, batched liveness, no leak under a slow,
flaky, cancelled control plane."""

from __future__ import annotations

import asyncio
import random

import pytest

from rollout.sandbox import SlotLimits, SlotPool
from rollout.types import SandboxError
from tests.sandbox.conftest import pid_alive, slot_server_pids
from tests.sandbox.seam_backends import SlowConfig, VirtualConfig, read_events

LIMITS = SlotLimits(memory_mb=512, pids=256)


async def test_a_burst_of_200_acquires_keeps_the_start_rate_and_the_starting_cap() -> None:
    cfg = VirtualConfig(min_hosts=0, max_hosts=100, slots_per_host=2, start_rate=40.0,
                        start_burst=5, max_starting=3, start_delay=0.03,
                        health_check_interval=60)
    pool = SlotPool.from_config(cfg, LIMITS)
    await pool.start()
    try:
        slots = await asyncio.gather(*(pool.acquire(f"t{i}", timeout=60) for i in range(200)))
        assert len({(s.host_id, s.index) for s in slots}) == 200
        backend = pool.backend
        starts = sorted(backend.starts)
        assert len(starts) == 100 == pool.stats()["hosts"]
        # Rate: a leaky bucket of `start_burst` at `start_rate`/s: in any window from one
        # start to a later one, at most burst + rate * window starts (5 ms of clock slack).
        began = [b for b, _ in starts]
        for i in range(len(began)):
            for j in range(i, len(began)):
                allowed = cfg.start_burst + cfg.start_rate * (began[j] - began[i] + 0.005)
                assert j - i + 1 <= allowed, (i, j, began[j] - began[i])
        # Cap: never more than max_starting starts in flight at once.
        edges = sorted([(b, 1) for b, _ in starts] + [(e, -1) for _, e in starts],
                       key=lambda x: (x[0], x[1]))
        in_flight = peak = 0
        for _, step in edges:
            in_flight += step
            peak = max(peak, in_flight)
        assert peak == cfg.max_starting
        await asyncio.gather(*(pool.release(s, reset=False) for s in slots))
    finally:
        await pool.stop()


async def test_acquires_make_no_control_plane_calls() -> None:
    """256 concurrent cycles between monitor rounds: zero liveness calls to the backend."""
    cfg = SlowConfig(min_hosts=2, max_hosts=2, slots_per_host=8, delay_before=0,
                     delay_after=0, fail_rate=0, health_check_interval=3600)
    pool = SlotPool.from_config(cfg, LIMITS)
    await pool.start()
    try:
        async def cycle(n: int) -> None:
            slot = await pool.acquire(f"t{n}", timeout=120)
            await pool.release(slot, reset=n % 4 == 0)

        await asyncio.gather(*(cycle(n) for n in range(256)))
        assert pool.stats()["acquires"] == 256
        assert pool.backend.alive_calls == []
    finally:
        await pool.stop()


async def test_liveness_is_one_batched_call_per_monitor_round() -> None:
    interval = 0.05
    cfg = SlowConfig(min_hosts=3, max_hosts=3, slots_per_host=4, delay_before=0,
                     delay_after=0, fail_rate=0, health_check_interval=interval)
    pool = SlotPool.from_config(cfg, LIMITS)
    await pool.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async def cycle(n: int) -> None:
            slot = await pool.acquire(f"t{n}", timeout=120)
            await pool.sandbox(slot).exec("true")
            await pool.release(slot)

        await asyncio.gather(*(cycle(n) for n in range(256)))
        elapsed = loop.time() - began
        calls = pool.backend.alive_calls
        hosts = {hs.host_id for hs in pool.fleet.hosts.values()}
        assert calls, "the monitor never ran"
        # One call per round, each covering every host; rounds are `interval` apart at least.
        assert len(calls) <= elapsed / interval + 1
        assert all(set(c) == hosts for c in calls)
    finally:
        await pool.stop()


async def test_slow_flaky_cancelled_starts_leak_nothing(tmp_path) -> None:
    """Starts that take a while, fail 20% of the time (before or after the server is up),
    acquires that give up mid-wait, and a stop while starts are still in flight."""
    before = set(slot_server_pids())
    events = tmp_path / "events.jsonl"
    cfg = SlowConfig(min_hosts=0, max_hosts=3, slots_per_host=2, delay_before=0.1,
                     delay_after=0.3, fail_rate=0.2, seed=143, events=str(events),
                     idle_scale_down=0, health_check_interval=0.2, max_starting=2)
    # Seed 143 with this run id: the first start fails before its server exists, the second
    # after it is running, then 20% at random.
    pool = SlotPool.from_config(cfg, LIMITS, run_id="flaky")
    await pool.start()
    rng = random.Random(5)
    outcomes = {"ran": 0, "gave_up": 0, "failed": 0}

    async def trajectory(n: int) -> None:
        image = f"img-{n % 3}"
        try:
            slot = await pool.acquire(f"t{n}", image=image, timeout=rng.choice([0.05, 30]))
        except SandboxError as e:
            outcomes["gave_up" if "acquire timeout" in str(e) else "failed"] += 1
            return
        try:
            assert (await pool.sandbox(slot).exec(f"echo {n}")).stdout == f"{n}\n"
            outcomes["ran"] += 1
        finally:
            await pool.release(slot)

    await asyncio.gather(*(trajectory(n) for n in range(30)), return_exceptions=True)
    assert outcomes["ran"] > 0
    # More demand, then stop while its starts are in flight.
    late = [asyncio.ensure_future(pool.acquire(f"late{i}", image=f"img-late-{i}", timeout=30))
            for i in range(4)]
    await asyncio.sleep(0.15)
    await pool.stop()
    await asyncio.gather(*late, return_exceptions=True)

    log = read_events(events)
    kinds = {e["event"] for e in log}
    failures = [e["error"] for e in log if e["event"] == "failed"]
    assert any("refused" in f for f in failures) and any("registration" in f for f in failures)
    assert "started" in kinds
    server_pids = {e["server_pid"] for e in log if e["event"] == "server"}
    assert server_pids and not any(pid_alive(p) for p in server_pids)
    assert {p for p in slot_server_pids() if p not in before and pid_alive(p)} == set()
    assert pool.stats()["hosts"] == 0 and pool.stats()["stopped"]


async def test_hosts_left_running_by_this_run_are_adopted_or_stopped() -> None:
    """After a driver restart the backend reports this run's hosts: a fitting one is adopted
    (no new start for min_hosts), one of another shape is stopped."""
    cfg = VirtualConfig(min_hosts=1, max_hosts=2, slots_per_host=2, leftover_slots=(2, 5),
                        health_check_interval=60)
    pool = SlotPool.from_config(cfg, LIMITS)
    await pool.start()
    try:
        backend = pool.backend
        assert pool.stats()["hosts_adopted"] == 1 and backend.starts == []
        slot = await pool.acquire("t")
        assert slot.host_id == "leftover-0"
        await pool.release(slot, reset=False)
        assert "leftover-1" not in backend.running
    finally:
        await pool.stop()
    assert pool.backend.running == {}


@pytest.mark.parametrize("key, value", [("start_rate", 0), ("max_starting", 0),
                                        ("start_rate", float("nan"))])
def test_fleet_limits_are_validated(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        VirtualConfig(**{key: value})
