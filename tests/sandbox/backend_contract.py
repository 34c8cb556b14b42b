"""The `Backend` contract (rollout/protocols.py), as a suite every backend runs.

A backend's test module subclasses `BackendContract` and provides a `harness` fixture
(`Harness`: how to make the backend, and how to see what it left running). See
tests/sandbox/test_backend_contract.py for the local and slow backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from rollout.protocols import Backend
from rollout.sandbox.client import SlotServerClient
from rollout.types import Host

# Where a start is cancelled, in seconds after it began: before, during and after the server
# process comes up. The assertion holds wherever the cancel lands.
CANCEL_POINTS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)


@dataclass
class Harness:
    make: Callable[[], Backend]  # a new backend instance of one run
    running: Callable[[], set[int]]  # what it has running now (pids or ids), to find leaks
    image: str | None = None


async def _healthy(host: Host) -> bool:
    async with aiohttp.ClientSession() as session:
        try:
            await SlotServerClient(session, host.url, host.token).health(timeout=10)
        except Exception:  # noqa: BLE001
            return False
        return True


async def _start(backend: Backend, image: str | None, tries: int = 10) -> Host:
    """Start a host, retrying the failures a flaky test backend injects on purpose."""
    error: Exception | None = None
    for _ in range(tries):
        try:
            return await backend.start_host(image, 2)
        except Exception as e:  # noqa: BLE001
            error = e
    raise AssertionError(f"no host started in {tries} tries: {error}")


class BackendContract:
    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError("a backend's contract module provides `harness`")

    async def test_started_host_serves_and_stop_is_idempotent(self, harness: Harness) -> None:
        backend = harness.make()
        try:
            host = await _start(backend, harness.image)
            assert host.slots == 2 and host.image == harness.image
            assert await _healthy(host)
            assert await backend.hosts_alive([host]) == {host.host_id}
            await backend.stop_host(host)
            await backend.stop_host(host)  # idempotent
            assert await backend.hosts_alive([host]) == set()
            assert not await _healthy(host)
        finally:
            await backend.close()
        assert harness.running() == set()

    async def test_hosts_alive_is_one_call_for_many_and_never_raises(
            self, harness: Harness) -> None:
        backend = harness.make()
        try:
            a, b = await _start(backend, harness.image), await _start(backend, harness.image)
            stranger = Host(host_id="never-started", url="http://127.0.0.1:9", token="t" * 32,
                            image=None, slots=1)
            assert await backend.hosts_alive([a, b, stranger]) == {a.host_id, b.host_id}
            await backend.stop_host(a)
            assert await backend.hosts_alive([a, b, stranger]) == {b.host_id}
            assert await backend.hosts_alive([]) == set()
            await backend.stop_host(stranger)  # unknown host: no error
        finally:
            await backend.close()
        assert harness.running() == set()

    @pytest.mark.parametrize("cancel_after", CANCEL_POINTS)
    async def test_cancelled_start_leaves_nothing_running(
            self, harness: Harness, cancel_after: float) -> None:
        backend = harness.make()
        try:
            start = asyncio.ensure_future(backend.start_host(harness.image, 2))
            await asyncio.wait({start}, timeout=cancel_after)
            start.cancel()
            results = await asyncio.gather(start, return_exceptions=True)
            if isinstance(results[0], Host):  # it finished first: a normal host to stop
                await backend.stop_host(results[0])
        finally:
            await backend.close()
        assert harness.running() == set()

    async def test_close_reaps_every_host_and_is_idempotent(self, harness: Harness) -> None:
        backend = harness.make()
        hosts = [await _start(backend, harness.image) for _ in range(2)]
        assert len(harness.running()) >= 2
        await asyncio.gather(backend.close(), backend.close())
        await backend.close()
        assert harness.running() == set()
        for host in hosts:
            assert not await _healthy(host)

    async def test_a_fresh_run_adopts_nothing(self, harness: Harness) -> None:
        backend = harness.make()
        try:
            assert await backend.discover() == []
        finally:
            await backend.close()
