"""`HostFleet`: the hosts of one pool. Provisions them through a `Backend`, watches them,
replaces dead ones and scales per image between min_hosts and max_hosts.

Guarantees (tests/sandbox/test_fleet.py, tests/sandbox/backend_contract.py):
- Starts never exceed `start_rate` (a leaky bucket of `start_burst`) nor `max_starting` at
  once; a start is counted the moment it is decided, so concurrent decisions never overshoot
  `max_hosts` or the shared `HostQuota`.
- Liveness costs one control-plane call per monitor interval for all hosts
  (`Backend.hosts_alive`), plus the slot servers' own health probes; nothing per acquire.
- `stop()` stops every host (started, starting or adopted) and closes the backend.
- A host with a lifetime (`Host.meta["retire_at"]`) gets no new lease after that time and
  is retired by the monitor once none of its slots is leased or being reset.

The fleet owns the hosts (`HostState`: process, client, liveness, retire time); its pool owns
their slots (`SlotTable`). Neither changes the other's: the fleet tells the pool when a host
joins or leaves, and asks it which hosts are idle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import aiohttp
from aiolimiter import AsyncLimiter

from rollout.protocols import Backend
from rollout.sandbox.client import SlotServerClient
from rollout.sandbox.config import BackendConfig
from rollout.sandbox.hosts import HostState
from rollout.types import Host

log = logging.getLogger(__name__)


class FleetListener(Protocol):
    """What the fleet tells its pool, and asks it."""

    def host_up(self, hs: HostState) -> None: ...

    def host_gone(self, host_id: str) -> None:
        """The host left the fleet (retired, dead or stopped): its slots are gone."""
        ...

    def idle_since(self, host_id: str) -> float | None:
        """When the host's last slot came back (time.monotonic); None while one is out."""
        ...

    def start_failed(self, image: str | None, error: Exception) -> None: ...

    def demand(self) -> dict[str | None, int]:
        """Waiting acquires per image."""
        ...


class HostQuota(Protocol):
    """A host budget shared by several fleets (the shards of one run)."""

    async def take(self) -> bool: ...

    async def give(self) -> None: ...


class HostFleet:
    def __init__(self, backend: Backend, cfg: BackendConfig,
                 quota: HostQuota | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        self.quota = quota
        self.listener: FleetListener | None = None
        self.hosts: dict[str, HostState] = {}
        self.gone: dict[str, str] = {}  # host_id -> why it left (for stale-slot messages)
        self.starting: collections.Counter[str | None] = collections.Counter()
        self.start_errors: dict[str | None, str] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self._limiter = AsyncLimiter(cfg.start_burst, cfg.start_burst / cfg.start_rate)
        self._start_slots: asyncio.Semaphore | None = None
        self._quota_held: set[str] = set()  # host ids holding a unit of the shared quota
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.closed = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt this run's running hosts, then bring up min_hosts of the default image."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        self._start_slots = asyncio.Semaphore(self.cfg.max_starting)
        misfits = []
        for host in await self.backend.discover():
            if host.slots == self.cfg.slots_per_host and self.room():
                self._add(host, host.image)
                self.counts["adopted"] += 1
            else:
                misfits.append(host)
        await asyncio.gather(*(self._stop_host(h) for h in misfits))
        image = self.cfg.default_image
        have = sum(1 for hs in self.hosts.values() if hs.image == image)
        starts = [self._counted_start(image) for _ in range(self.cfg.min_hosts - have)
                  if self.room()]
        results = await asyncio.gather(*starts, return_exceptions=True)
        if self.cfg.min_hosts and not self.hosts:
            error = next((r for r in results if isinstance(r, BaseException)), None)
            raise error or RuntimeError("no host could be started")
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def stop(self) -> None:
        """Stop everything. The pool calls it once, shielded."""
        self.closed = True
        pending = [t for t in [self._monitor, *self._tasks] if t is not None]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        hosts = list(self.hosts.values())
        for hs in hosts:
            self._forget(hs, "was stopped with the pool")
        await asyncio.gather(*(self._stop_host(hs.host) for hs in hosts),
                             return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.backend.close()
        if self._session is not None:
            await self._session.close()
        log.info("sandbox fleet stopped (%d hosts)", len(hosts))

    # --- scaling --------------------------------------------------------------------------

    def room(self) -> bool:
        return len(self.hosts) + sum(self.starting.values()) < self.cfg.max_hosts

    def ensure(self, image: str | None, demand: int) -> None:
        """Start a host of `image` if `demand` waiting slots exceed what is already starting;
        at max_hosts, retire an idle host of another image to make room."""
        if self.closed or demand <= self.starting[image] * self.cfg.slots_per_host:
            return
        if not self.room():
            idle = next((hs for hs in self.hosts.values()
                         if hs.image != image and self._idle_since(hs) is not None), None)
            if idle is None:
                return  # at capacity: wait for a release
            # Forget it synchronously so no other decision picks the same host.
            self._forget(idle, "was retired to make room for another image")
            self._spawn(self._stop_host(idle.host))
        self._spawn(self._counted_start(image))

    def _counted_start(self, image: str | None) -> Awaitable[None]:
        """Count the start now (not when its task first runs), so concurrent decisions see it."""
        self.starting[image] += 1
        return self._start(image)

    async def _start(self, image: str | None) -> None:
        assert self._start_slots is not None
        quota_taken = False
        try:
            if self.quota is not None:
                quota_taken = await self.quota.take()
                if not quota_taken:
                    self.counts["quota_denied"] += 1
                    return  # the monitor asks again while slots are wanted
            async with self._start_slots:
                await self._limiter.acquire()
                self.counts["starts"] += 1
                host = await asyncio.wait_for(
                    self.backend.start_host(image, self.cfg.slots_per_host),
                    self.cfg.host_start_timeout)
        except asyncio.CancelledError:
            if quota_taken:
                await _quietly(self.quota.give())  # type: ignore[union-attr]
            raise
        except Exception as e:
            if quota_taken:
                await _quietly(self.quota.give())  # type: ignore[union-attr]
            self.counts["host_failures"] += 1
            why = str(e) or type(e).__name__
            self.start_errors[image] = why
            log.error("could not start a sandbox host for image %r: %s", image, why)
            if (self.listener is not None and self.starting[image] <= 1
                    and not any(hs.image == image for hs in self.hosts.values())):
                self.listener.start_failed(image, e)
            raise
        finally:
            self.starting[image] -= 1
        if quota_taken:
            self._quota_held.add(host.host_id)
        if self.closed:
            await self._stop_host(host)
            return
        self.start_errors.pop(image, None)
        self._add(host, image)

    def _add(self, host: Host, image: str | None) -> None:
        assert self._session is not None
        hs = HostState(host, SlotServerClient(self._session, host.url, host.token), image)
        self.hosts[host.host_id] = hs
        if self.listener is not None:
            self.listener.host_up(hs)

    # --- failures -------------------------------------------------------------------------

    async def suspect(self, hs: HostState) -> bool:
        """A call to this host failed at the transport level: is it dead? Retire it if so."""
        if not hs.alive:
            return True
        if await hs.probe():
            return False
        await self.retire(hs, "died (failed its health check)", failure=True)
        return True

    async def usable(self, hs: HostState) -> bool:
        """Before a hand-out: the monitor's view, plus a health probe if not heard from within
        one interval. No control-plane call."""
        if hs.alive and (hs.fresh(self.cfg.health_check_interval) or await hs.probe()):
            return True
        await self.retire(hs, "died (failed its liveness check)", failure=True)
        return False

    def _forget(self, hs: HostState, why: str) -> None:
        hs.alive = False
        self.hosts.pop(hs.host_id, None)
        self.gone[hs.host_id] = why
        if len(self.gone) > 10_000:  # bounded memory on very long runs
            self.gone.pop(next(iter(self.gone)))
        if self.listener is not None:
            self.listener.host_gone(hs.host_id)

    def _idle_since(self, hs: HostState) -> float | None:
        """When all of the host's slots came back; None while any is out (reserved, leased,
        being reset, quarantined). Without a pool no host counts as idle."""
        return self.listener.idle_since(hs.host_id) if self.listener is not None else None

    async def retire(self, hs: HostState, why: str, *, failure: bool = False) -> None:
        if not hs.alive:
            return
        self._forget(hs, why)
        if failure:
            self.counts["host_failures"] += 1
            log.error("sandbox host %s (%s) %s; replacing it", hs.host_id, hs.host.url, why)
        else:
            log.info("sandbox host %s %s", hs.host_id, why)
        # Count the replacement before awaiting anything, so the monitor's min_hosts top-up
        # cannot start a second one meanwhile.
        if failure and not self.closed and self.room():
            self.counts["replacements"] += 1
            self._spawn(self._counted_start(hs.image))
        await self._stop_host(hs.host)

    async def _stop_host(self, host: Host) -> None:
        try:
            await self.backend.stop_host(host)
        except Exception as e:  # noqa: BLE001 - stop_host should not raise; log if it does
            log.warning("stopping host %s failed: %s", host.host_id, e)
        if self.quota is not None and host.host_id in self._quota_held:
            self._quota_held.discard(host.host_id)
            await _quietly(self.quota.give())

    # --- monitor --------------------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        interval = self.cfg.health_check_interval
        while not self.closed:
            await asyncio.sleep(interval)
            await self.check()

    async def check(self) -> None:
        """One monitor round: one batched control-plane call, health probes, scaling."""
        hosts = list(self.hosts.values())
        if hosts:
            self.counts["liveness_calls"] += 1
            try:
                seen = await self.backend.hosts_alive([hs.host for hs in hosts])
            except Exception as e:  # noqa: BLE001 - a flaky control plane is not a dead host
                log.warning("backend liveness check failed: %s", e)
                seen = {hs.host_id for hs in hosts}
            probes = await asyncio.gather(*(hs.probe() for hs in hosts if hs.host_id in seen))
            ok = iter(probes)
            for hs in hosts:
                if hs.host_id not in seen:
                    await self.retire(hs, "is gone (its backend no longer runs it)",
                                      failure=True)
                elif not next(ok):
                    await self.retire(hs, "died (failed its health check)", failure=True)
        for hs in list(self.hosts.values()):
            if hs.draining() and self._idle_since(hs) is not None:
                await self.retire(hs, "reached its retire time (before its lifetime ends)")
        wanted = self.listener.demand() if self.listener is not None else {}
        now = time.monotonic()
        for hs in list(self.hosts.values()):
            idle_since = self._idle_since(hs)
            if (len(self.hosts) > self.cfg.min_hosts and idle_since is not None
                    and now - idle_since > self.cfg.idle_scale_down
                    and not wanted.get(hs.image)):
                await self.retire(hs, "was idle and scaled down")
        default = self.cfg.default_image
        have = sum(1 for hs in self.hosts.values() if hs.image == default)
        for _ in range(self.cfg.min_hosts - have - self.starting[default]):
            if self.room():
                self._spawn(self._counted_start(default))
        for image, waiting in wanted.items():  # demand a denied or failed start left unmet
            self.ensure(image, waiting)

    def stats(self) -> dict[str, Any]:
        return {"hosts": len(self.hosts), "hosts_starting": sum(self.starting.values()),
                "host_failures": self.counts["host_failures"],
                "replacements": self.counts["replacements"],
                "host_starts": self.counts["starts"], "hosts_adopted": self.counts["adopted"]}

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_finished)


def _finished(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception (already logged where it arose)."""
    if not task.cancelled():
        task.exception()


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception as e:  # noqa: BLE001 - the quota is advisory bookkeeping
        log.warning("host quota call failed: %s", e)
