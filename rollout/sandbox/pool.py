"""`SlotPool`: hands out slots of sandbox hosts, one holder per slot.

Guarantees (each is tested in tests/sandbox/test_pool.py):
- A slot is held by at most one holder: it leaves the free list when reserved and only
  returns after its holder released it and its reset finished.
- Liveness is checked before hand-out: a slot of a host that is gone is never returned.
- A call with a stale or foreign `Slot` (released, or its host died/was replaced) raises
  SandboxError; a dead host fails its holders' calls with SandboxError, is retired and
  replaced (up to max_hosts), and later acquires succeed.
- All methods are safe to call concurrently from many coroutines of one event loop.
- `stop()` is the one teardown path: idempotent, runs to completion even if the caller is
  cancelled, and leaves no host running. The backend's atexit hook is the backstop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from rollout.protocols import Backend
from rollout.sandbox.client import HostUnreachable, SlotServerClient
from rollout.sandbox.config import PoolConfig
from rollout.sandbox.hosts import HostState
from rollout.sandbox.slot_sandbox import SlotSandbox
from rollout.types import ExecResult, SandboxError, Slot

log = logging.getLogger(__name__)
T = TypeVar("T")
ExecItem = tuple | dict  # (slot, command[, {timeout, cwd, env}]) or {"slot", "command", ...}


class SlotPool:
    def __init__(self, backend: Backend, config: PoolConfig | None = None) -> None:
        self.backend = backend
        self.config = config or PoolConfig()
        self._hosts: dict[str, HostState] = {}
        self._gone: dict[str, str] = {}  # host_id -> why it left (for stale-slot messages)
        self._free: dict[str | None, collections.deque[tuple[str, int]]] = (
            collections.defaultdict(collections.deque))
        self._waiters: dict[str | None, collections.deque[asyncio.Future]] = (
            collections.defaultdict(collections.deque))
        self._starting: collections.Counter[str | None] = collections.Counter()
        self._start_errors: dict[str | None, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._stop_task: asyncio.Task[None] | None = None
        self._counts = collections.Counter()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session and bring up `min_hosts` hosts of the default image."""
        if self._closed:
            raise SandboxError("this SlotPool was stopped; create a new one")
        if self._started:
            return
        self._started = True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        image = self.config.default_image
        results = await asyncio.gather(
            *(self._provision_counted(image) for _ in range(self.config.min_hosts)),
            return_exceptions=True)
        if self.config.min_hosts and not self._hosts:
            await self.stop()
            raise SandboxError(f"sandbox pool could not start any host: {results[0]}")
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def stop(self) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._stop_task)

    async def _teardown(self) -> None:
        self._closed = True
        pending = [t for t in [self._monitor, *self._tasks] if t is not None]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(SandboxError("sandbox pool stopped"))
        hosts = list(self._hosts.values())
        for hs in hosts:
            self._forget(hs, "was stopped with the pool")
        await asyncio.gather(*(self.backend.stop_host(hs.host) for hs in hosts),
                             return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.backend.close()
        if self._session is not None:
            await self._session.close()
        log.info("sandbox pool stopped (%d hosts)", len(hosts))

    # --- acquire / release ----------------------------------------------------------------

    async def acquire(self, trajectory_id: str, image: str | None = None,
                      timeout: float | None = None) -> Slot:
        """A free slot of a host of `image` (default image if None). Raises SandboxError if
        none becomes free within `timeout` or hosts of that image cannot be started."""
        if not self._started:
            await self.start()
        image = self.config.default_image if image is None else image
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.acquire_timeout if timeout is None else timeout)
        while True:
            self._check_open()
            got = self._take_free(image)
            if got is None:
                got = await self._wait_for_slot(image, deadline)
                if got is None:
                    continue
            hs, index = got
            try:
                usable = await self._usable(hs)
            except BaseException:
                self._give(hs, index)
                raise
            if not usable:
                continue
            lease = uuid.uuid4().hex
            hs.leases[index] = lease
            hs.holders[index] = trajectory_id
            self._counts["acquires"] += 1
            return Slot(host_id=hs.host.host_id, index=index, image=image, lease=lease)

    async def _wait_for_slot(self, image: str | None,
                             deadline: float) -> tuple[HostState, int] | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiters[image].append(fut)
        self._scale_up(image)
        remaining = deadline - loop.time()
        try:
            if remaining > 0:
                await asyncio.wait({fut}, timeout=remaining)
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters[image].remove(fut)
            elif asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self._return_unused(fut)
        if fut.cancelled():
            why = self._start_errors.get(image)
            raise SandboxError(
                f"no free sandbox slot for image {image!r} within the acquire timeout "
                f"({self.stats()['slots_in_use']} in use, {len(self._hosts)} hosts, "
                f"max_hosts={self.config.max_hosts})" + (f"; last host start failed: {why}"
                                                         if why else ""))
        return fut.result()  # raises the pool's error if it failed us

    def _return_unused(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
            self._give(*fut.result())

    async def release(self, slot: Slot, reset: bool = True) -> None:
        """End the lease. With reset, the workspace is wiped before anyone else gets it."""
        hs = self._validate(slot)
        hs.leases[slot.index] = None
        hs.holders[slot.index] = None
        self._counts["releases"] += 1
        if not reset:
            self._give(hs, slot.index)
            return
        # Shielded: a cancelled caller must not strand the slot half-reset.
        task = asyncio.ensure_future(self._reset_and_return(hs, slot.index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_finished)
        await asyncio.shield(task)

    async def release_holder(self, prefix: str) -> int:
        """Release (with reset) every slot whose trajectory id starts with `prefix`.

        For holders that died without releasing (a lost worker process): their slots would
        otherwise stay leased forever. Returns how many slots were released.
        """
        mine = [Slot(host_id=hs.host.host_id, index=i, image=hs.image, lease=lease)
                for hs in list(self._hosts.values())
                for i, (lease, holder) in enumerate(zip(hs.leases, hs.holders))
                if lease is not None and holder is not None and holder.startswith(prefix)]
        results = await asyncio.gather(*(self.release(s) for s in mine), return_exceptions=True)
        for s, r in zip(mine, results):
            if isinstance(r, Exception):
                log.warning("releasing %s/%d of a dead holder failed: %s", s.host_id, s.index, r)
        return len(mine)

    async def _reset_and_return(self, hs: HostState, index: int) -> None:
        try:
            await hs.client.reset(index)
        except HostUnreachable as e:
            await self._host_failed(hs, e)
            raise SandboxError(f"could not reset slot {hs.host.host_id}/{index}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a slot that failed reset must not be reused
            log.error("reset of slot %s/%d failed; slot quarantined: %s",
                      hs.host.host_id, index, e)
            raise SandboxError(f"could not reset slot {hs.host.host_id}/{index}: {e}") from e
        self._give(hs, index)

    @contextlib.asynccontextmanager
    async def session(self, trajectory_id: str, image: str | None = None,
                      timeout: float | None = None) -> AsyncIterator[SlotSandbox]:
        """`async with pool.session(tid) as sandbox:` acquire, then always release."""
        slot = await self.acquire(trajectory_id, image=image, timeout=timeout)
        try:
            yield SlotSandbox(self, slot)
        finally:
            try:
                await self.release(slot)
            except SandboxError as e:
                # Host died or pool stopped: the slot is gone anyway; the body already saw it.
                log.warning("release of %s/%d for %s: %s", slot.host_id, slot.index,
                            trajectory_id, e)

    def sandbox(self, slot: Slot) -> SlotSandbox:
        self._validate(slot)
        return SlotSandbox(self, slot)

    # --- commands and files ---------------------------------------------------------------

    async def exec(self, slot: Slot, command: str, timeout: float = 60.0,
                   cwd: str | None = None, env: dict[str, str] | None = None) -> ExecResult:
        timeout = min(timeout, self.config.exec_timeout_cap)
        return await self._call(slot, lambda c: c.exec(slot.index, command, timeout=timeout,
                                                       cwd=cwd, env=env))

    async def exec_batch(self, items: list[ExecItem]) -> list[ExecResult]:
        """Run many commands (one request per host, run concurrently there). Results are in
        input order; an item the server refused raises its SlotRequestError."""
        by_host: dict[str, list[tuple[int, dict[str, Any]]]] = collections.defaultdict(list)
        slots: dict[str, Slot] = {}
        for pos, item in enumerate(items):
            slot, spec = _normalize(item)
            spec["timeout"] = min(float(spec.get("timeout") or 60.0),
                                  self.config.exec_timeout_cap)
            self._validate(slot)
            by_host[slot.host_id].append((pos, spec))
            slots[slot.host_id] = slot
        results: list[ExecResult | Exception | None] = [None] * len(items)

        async def run(host_id: str, batch: list[tuple[int, dict[str, Any]]]) -> None:
            out = await self._call(slots[host_id],
                                   lambda c: c.exec_batch([spec for _, spec in batch]))
            for (pos, _), r in zip(batch, out):
                results[pos] = r

        await asyncio.gather(*(run(h, b) for h, b in by_host.items()))
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results  # type: ignore[return-value]

    async def read_file(self, slot: Slot, path: str, max_bytes: int | None = None) -> bytes:
        return await self._call(slot, lambda c: c.read_file(slot.index, path, max_bytes))

    async def write_file(self, slot: Slot, path: str, data: bytes) -> None:
        await self._call(slot, lambda c: c.write_file(slot.index, path, data))

    async def list_dir(self, slot: Slot, path: str = ".") -> list[dict[str, Any]]:
        return await self._call(slot, lambda c: c.list_dir(slot.index, path))

    async def archive(self, slot: Slot, path: str = ".") -> bytes:
        return await self._call(slot, lambda c: c.archive(slot.index, path))

    async def upload_archive(self, slot: Slot, data: bytes, path: str = ".") -> None:
        await self._call(slot, lambda c: c.upload_archive(slot.index, data, path))

    async def _call(self, slot: Slot, fn: Callable[[SlotServerClient], Awaitable[T]]) -> T:
        hs = self._validate(slot)
        try:
            return await fn(hs.client)
        except HostUnreachable as e:
            dead = await self._host_failed(hs, e)
            state = "died and is being replaced" if dead else "did not answer"
            raise SandboxError(f"slot {slot.host_id}/{slot.index}: host {state} ({e})") from e

    # --- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        per_image: dict[str, dict[str, int]] = {}
        in_use = total = 0
        for hs in self._hosts.values():
            held = sum(1 for lease in hs.leases if lease is not None)
            d = per_image.setdefault(str(hs.image), {"hosts": 0, "slots": 0, "in_use": 0})
            d["hosts"] += 1
            d["slots"] += hs.host.slots
            d["in_use"] += held
            in_use += held
            total += hs.host.slots
        return {
            "hosts": len(self._hosts),
            "hosts_starting": sum(self._starting.values()),
            "slots_total": total,
            "slots_in_use": in_use,
            "slots_free": sum(1 for q in self._free.values() for h, _ in q if h in self._hosts),
            "images": per_image,
            "acquires": self._counts["acquires"],
            "releases": self._counts["releases"],
            "host_failures": self._counts["host_failures"],
            "replacements": self._counts["replacements"],
            "waiting": sum(len(q) for q in self._waiters.values()),
            "stopped": self._closed,
        }

    # --- internals: slots -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("sandbox pool is stopped")

    def _validate(self, slot: Slot) -> HostState:
        self._check_open()
        if not isinstance(slot, Slot):
            raise SandboxError(f"expected a Slot from pool.acquire, got {type(slot).__name__}")
        hs = self._hosts.get(slot.host_id)
        if hs is None:
            why = self._gone.get(slot.host_id, "is unknown to this pool")
            raise SandboxError(f"slot {slot.host_id}/{slot.index} is stale: its host {why}")
        if not 0 <= slot.index < len(hs.leases) or hs.leases[slot.index] != slot.lease:
            raise SandboxError(f"slot {slot.host_id}/{slot.index} is not held under this lease "
                               "(already released, or never acquired from this pool)")
        return hs

    def _take_free(self, image: str | None) -> tuple[HostState, int] | None:
        q = self._free[image]
        while q:
            host_id, index = q.popleft()
            hs = self._hosts.get(host_id)
            if hs is not None and hs.alive:
                hs.busy += 1
                return hs, index
        return None

    def _give(self, hs: HostState, index: int) -> None:
        """Hand a reserved slot to the longest waiter of its image, or put it back."""
        if not hs.alive or self._closed:
            return
        waiters = self._waiters[hs.image]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result((hs, index))
                return
        hs.busy -= 1
        if hs.busy == 0:
            hs.idle_since = time.monotonic()
        self._free[hs.image].append((hs.host.host_id, index))

    async def _usable(self, hs: HostState) -> bool:
        if hs.alive and await hs.check_alive(self.backend, self.config.health_check_interval):
            return True
        await self._retire(hs, "died (failed its liveness check)", failure=True)
        return False

    # --- internals: hosts -----------------------------------------------------------------

    def _scale_up(self, image: str | None) -> None:
        """Start a host if waiters of `image` outnumber the capacity already starting."""
        demand = len(self._waiters[image])
        coming = self._starting[image] * self.config.slots_per_host
        if demand <= coming:
            return
        if not self._room_for_host():
            idle = next((hs for hs in self._hosts.values()
                         if hs.image != image and hs.busy == 0), None)
            if idle is None:
                return  # at capacity: wait for a release
            # Forget it synchronously so no other waiter picks the same host.
            self._forget(idle, "was retired to make room for another image")
            self._spawn(self.backend.stop_host(idle.host))
        self._spawn(self._provision_counted(image))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_finished)

    def _provision_counted(self, image: str | None) -> Awaitable[None]:
        """Count the start at once (not when the task first runs), so concurrent scale-up
        decisions see it and never exceed max_hosts."""
        self._starting[image] += 1
        return self._provision(image)

    async def _provision(self, image: str | None) -> None:
        """Start one host of `image`; the caller has already counted it in `_starting`."""
        try:
            host = await asyncio.wait_for(
                self.backend.start_host(image, self.config.slots_per_host),
                self.config.host_start_timeout)
        except Exception as e:
            self._counts["host_failures"] += 1
            self._start_errors[image] = str(e)
            log.error("could not start a sandbox host for image %r: %s", image, e)
            if not any(hs.image == image for hs in self._hosts.values()):
                self._fail_waiters(image, SandboxError(
                    f"could not start a sandbox host for image {image!r}: {e}"))
            raise
        finally:
            self._starting[image] -= 1
        if self._closed:
            await self.backend.stop_host(host)
            return
        assert self._session is not None
        hs = HostState(host, SlotServerClient(self._session, host.url, host.token), image)
        self._hosts[host.host_id] = hs
        self._start_errors.pop(image, None)
        hs.busy = host.slots
        for index in range(host.slots):
            self._give(hs, index)

    def _fail_waiters(self, image: str | None, error: Exception) -> None:
        if self._starting[image] > 1:  # another start is still coming
            return
        waiters = self._waiters.pop(image, collections.deque())
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)

    async def _host_failed(self, hs: HostState, error: Exception) -> bool:
        """A call to this host failed at the transport level: is it dead? Retire it if so."""
        if not hs.alive:
            return True
        if await hs.probe(self.backend):
            return False
        await self._retire(hs, f"died ({error})", failure=True)
        return True

    def _forget(self, hs: HostState, why: str) -> None:
        hs.alive = False
        self._hosts.pop(hs.host.host_id, None)
        self._gone[hs.host.host_id] = why
        if len(self._gone) > 10_000:  # bounded memory on very long runs
            self._gone.pop(next(iter(self._gone)))

    async def _retire(self, hs: HostState, why: str, *, failure: bool = False) -> None:
        if not hs.alive:
            return
        self._forget(hs, why)
        if failure:
            self._counts["host_failures"] += 1
            log.error("sandbox host %s (%s) %s; replacing it", hs.host.host_id, hs.host.url, why)
        else:
            log.info("sandbox host %s %s", hs.host.host_id, why)
        # Count the replacement before awaiting anything, so the monitor's min_hosts top-up
        # cannot start a second one meanwhile.
        if failure and not self._closed and self._room_for_host():
            self._counts["replacements"] += 1
            self._spawn(self._provision_counted(hs.image))
        with contextlib.suppress(Exception):
            await self.backend.stop_host(hs.host)

    def _room_for_host(self) -> bool:
        return len(self._hosts) + sum(self._starting.values()) < self.config.max_hosts

    async def _monitor_loop(self) -> None:
        """Background: health-check hosts, keep min_hosts, retire long-idle extra hosts."""
        interval = self.config.health_check_interval
        while not self._closed:
            await asyncio.sleep(interval)
            hosts = list(self._hosts.values())
            alive = await asyncio.gather(*(hs.probe(self.backend) for hs in hosts))
            for hs, ok in zip(hosts, alive):
                if not ok:
                    await self._retire(hs, "died (failed its health check)", failure=True)
            now = time.monotonic()
            for hs in list(self._hosts.values()):
                if (len(self._hosts) > self.config.min_hosts and hs.busy == 0
                        and now - hs.idle_since > self.config.idle_scale_down
                        and not self._waiters[hs.image]):
                    await self._retire(hs, "was idle and scaled down")
            default = self.config.default_image
            have = sum(1 for hs in self._hosts.values() if hs.image == default)
            for _ in range(self.config.min_hosts - have - self._starting[default]):
                if self._room_for_host():
                    self._spawn(self._provision_counted(default))


def _finished(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception (already logged where it arose)."""
    if not task.cancelled():
        task.exception()


def _normalize(item: ExecItem) -> tuple[Slot, dict[str, Any]]:
    if isinstance(item, dict):
        spec = {k: v for k, v in item.items() if k in ("command", "timeout", "cwd", "env")}
        slot = item["slot"]
    else:
        slot, command, *rest = item
        spec = {"command": command, **(rest[0] if rest else {})}
    if not isinstance(slot, Slot):
        raise SandboxError(f"exec_batch item needs a Slot, got {type(slot).__name__}")
    spec["slot"] = slot.index
    return slot, spec
