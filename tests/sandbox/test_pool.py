"""SlotPool guarantees, against real slot servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rollout.sandbox import SlotPool
from rollout.types import SandboxError, Slot
from tests.sandbox.conftest import pid_alive, slot_server_pids


async def _poll(condition, timeout: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _server_pids(pool: SlotPool) -> list[int]:
    return [hs.host.meta["pid"] for hs in pool._hosts.values()]


async def test_500_concurrent_cycles_never_share_a_slot(make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=2, slots_per_host=8)
    await pool.start()
    holders: dict[tuple[str, int], str] = {}
    max_hosts_seen = 0

    async def cycle(n: int) -> None:
        nonlocal max_hosts_seen
        tid = f"traj-{n}"
        slot = await pool.acquire(tid, timeout=120)
        key = (slot.host_id, slot.index)
        assert key not in holders, f"{key} handed to {tid} while held by {holders.get(key)}"
        holders[key] = tid
        max_hosts_seen = max(max_hosts_seen, pool.stats()["hosts"])
        try:
            await pool.call(slot, "write_file", "owner", tid.encode())
            r = await pool.call(slot, "exec", "ls -A; cat owner")
            # The workspace was reset: only this holder's file is there.
            assert r.stdout == f"owner\n{tid}", r
        finally:
            del holders[key]
            await pool.release(slot)

    await asyncio.gather(*(cycle(n) for n in range(500)))
    stats = pool.stats()
    assert stats["acquires"] == stats["releases"] == 500
    assert stats["slots_in_use"] == 0 and stats["waiting"] == 0
    assert stats["slots_free"] == stats["slots_total"] == 16
    assert max_hosts_seen <= 2


async def test_dead_host_fails_its_slots_and_is_replaced(make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=1, slots_per_host=4, health_check_interval=0.2)
    await pool.start()
    held = [await pool.acquire(f"t{i}") for i in range(2)]
    (old_pid,) = _server_pids(pool)
    running = asyncio.ensure_future(pool.call(held[1], "exec", "sleep 30", timeout=60))
    await asyncio.sleep(0.2)  # let the exec reach the server (it would fail either way)
    os.kill(old_pid, signal.SIGKILL)

    with pytest.raises(SandboxError):
        await running
    with pytest.raises(SandboxError, match="died|stale"):
        await pool.call(held[0], "exec", "true")
    assert await _poll(lambda: pool.stats()["replacements"] >= 1 and pool.stats()["hosts"] == 1)
    for slot in held:  # stale now: its host is gone
        with pytest.raises(SandboxError, match="stale"):
            await pool.call(slot, "read_file", "x")
    async with pool.session("after") as sandbox:
        r = await sandbox.exec("echo alive")
        assert r.stdout == "alive\n"
    assert _server_pids(pool) != [old_pid]
    assert pool.stats()["host_failures"] >= 1


async def test_stop_leaves_no_server_and_is_idempotent(make_pool) -> None:
    pool = make_pool(min_hosts=2, max_hosts=2)
    await pool.start()
    slot = await pool.acquire("t")
    pids = _server_pids(pool)
    root = pool.backend.root
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    await asyncio.gather(pool.stop(), pool.stop())
    await pool.stop()
    assert not any(pid_alive(p) for p in pids)
    assert not set(pids) & set(slot_server_pids())
    assert not root.exists()
    with pytest.raises(SandboxError, match="stopped"):
        await pool.call(slot, "exec", "true")
    with pytest.raises(SandboxError, match="stopped"):
        await pool.acquire("late")


async def test_stop_completes_even_if_the_caller_is_cancelled(make_pool) -> None:
    pool = make_pool(min_hosts=2, max_hosts=2)
    await pool.start()
    pids = _server_pids(pool)
    stopper = asyncio.ensure_future(pool.stop())
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await pool.stop()  # joins the teardown already under way
    assert not any(pid_alive(p) for p in pids)


_ORPHAN_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    from rollout.sandbox import LocalConfig, SlotPool
    async def main():
        pool = SlotPool.from_config(LocalConfig(min_hosts=2, max_hosts=2, slots_per_host=1))
        await pool.start()
        print(" ".join(str(hs.host.meta["pid"]) for hs in pool._hosts.values()), flush=True)
        if sys.argv[1] == "hang":
            time.sleep(600)  # to be SIGKILLed: no atexit, no stop()
    asyncio.run(main())  # "exit": returns without pool.stop(); atexit must clean up
""")


def _wait_dead(pids: list[int], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("how", ["exit", "hang"])
def test_no_server_survives_a_driver_that_never_called_stop(how: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, how], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2, proc.stderr.read()
    if how == "hang":
        assert all(pid_alive(p) for p in pids)
        proc.kill()  # SIGKILL: only the servers' --exit-with-parent can save us
    proc.wait(60)
    assert _wait_dead(pids)


async def test_stale_and_foreign_slots_raise(make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=1)
    slot = await pool.acquire("t")
    await pool.release(slot)
    for call in (pool.call(slot, "exec", "true"), pool.release(slot),
                 pool.call(slot, "read_file", "x"), pool.call(slot, "write_file", "x", b""),
                 pool.call(slot, "list_dir", "."), pool.call(slot, "archive", "."),
                 pool.call(slot, "upload_archive", b"")):
        with pytest.raises(SandboxError, match="not held"):
            await call
    forged = Slot(host_id=slot.host_id, index=0, image=None, lease="forged")
    with pytest.raises(SandboxError):
        await pool.call(forged, "exec", "true")
    with pytest.raises(SandboxError, match="unknown"):
        await pool.call(Slot("nope", 0, None, "x"), "exec", "true")
    with pytest.raises(SandboxError):
        pool.sandbox(slot)


async def test_refresh_wipes_the_slot_and_keeps_the_lease(make_pool) -> None:
    """The holder's own reset (grading's fresh slot): files, /tmp and background processes
    gone, the lease still good; after the release it is refused like any other op."""
    pool = make_pool(min_hosts=1, max_hosts=1)
    slot = await pool.acquire("refresh")
    sb = pool.sandbox(slot)
    await sb.write_file("kept.txt", b"x")
    # The background child execs sleep after the subshell returns: wait (bounded) until it has.
    before = await sb.exec("echo y > /tmp/y; (sleep 300 &) ; for _ in $(seq 100); do "
                           "ps -eo args | grep -q '^sleep 300' && break; sleep 0.05; done; "
                           "ps -eo args | grep -c '^sleep 300'")
    assert before.stdout.split() == ["1"], before
    await sb.refresh()
    after = await sb.exec("ls -A; ls /tmp; ps -eo args | grep -c '^sleep 300' || true")
    assert after.ok and "kept.txt" not in after.stdout and "y" not in after.stdout.split()
    assert after.stdout.split()[-1] == "0", after.stdout
    await pool.release(slot)
    with pytest.raises(SandboxError, match="not held"):
        await pool.call(slot, "refresh")


async def test_acquire_waits_times_out_and_hands_over(make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=1, slots_per_host=1)
    first = await pool.acquire("a")
    with pytest.raises(SandboxError, match="no free sandbox slot"):
        await pool.acquire("b", timeout=0.2)
    # A cancelled waiter must not swallow the slot.
    cancelled = asyncio.ensure_future(pool.acquire("c", timeout=30))
    waiting = asyncio.ensure_future(pool.acquire("d", timeout=30))
    assert await _poll(lambda: pool.stats()["waiting"] == 2)
    cancelled.cancel()
    await pool.release(first)
    second = await waiting
    assert (second.host_id, second.index) == (first.host_id, first.index)
    assert second.lease != first.lease
    await pool.release(second)
    assert pool.stats()["slots_free"] == 1 and pool.stats()["waiting"] == 0


async def test_images_get_their_own_hosts(make_pool) -> None:
    host = {"source": "host"}
    pool = make_pool(min_hosts=0, max_hosts=2, slots_per_host=2, mix_images=False,
                     images={"repo-a": host, "repo-b": host, "repo-c": host})
    await pool.start()
    a = await pool.acquire("t1", image="repo-a")
    b = await pool.acquire("t2", image="repo-b")
    assert a.host_id != b.host_id and (a.image, b.image) == ("repo-a", "repo-b")
    images = pool.stats()["images"]
    assert images["repo-a"]["in_use"] == 1 and images["repo-b"]["in_use"] == 1
    await pool.release(b)
    # At max_hosts, an idle host of another image makes room for a third image.
    c = await pool.acquire("t3", image="repo-c", timeout=60)
    assert c.image == "repo-c" and pool.stats()["hosts"] == 2
    assert "repo-b" not in pool.stats()["images"]
    await pool.release(a)
    await pool.release(c)


async def test_host_start_failure_is_a_clear_error(make_pool) -> None:
    pool = make_pool(isolation="required", env={"X": "1"})
    pool.backend.python = "/nonexistent/python"
    with pytest.raises(SandboxError, match="could not start"):
        await pool.start()
    assert pool.stats()["hosts"] == 0
