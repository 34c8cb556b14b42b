"""`SlotPool`: hands out slots of a `HostFleet`'s hosts, one holder per slot.

Guarantees (each is tested in tests/sandbox/test_pool.py):
- A slot is held by at most one holder: it leaves the free list when reserved and only
  returns after its holder released it and its reset finished.
- Release never waits for the reset: `release` ends the lease and returns at once; the
  workspace is reset in the background and only then is the slot handed out again (acquire
  gives out clean slots only). A reset that fails quarantines the slot (never reused; an
  unreachable host is reported to the fleet). Slots being reset count as supply on the way:
  they do not make the fleet start hosts. A slot of a draining host is not reset (it is
  never handed out again; its host is retired once all its slots are back).
- Liveness is checked before hand-out (the fleet's view, no control-plane call): a slot of a
  host that is gone is never returned.
- A call with a stale or foreign `Slot` (released, or its host died/was replaced) raises
  SandboxError; a dead host fails its holders' calls with SandboxError, is retired and
  replaced (up to max_hosts), and later acquires succeed.
- All methods are safe to call concurrently from many coroutines of one event loop.
- `stop()` is the one teardown path: idempotent, runs to completion even if the caller is
  cancelled, cancels the resets still in flight (and waits for them to end), and leaves no
  host running. The backend's atexit hook is the backstop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rollout.sandbox.client import SLOT_OPS, HostUnreachable, ImageUnavailable
from rollout.sandbox.config import BackendConfig
from rollout.sandbox.fleet import HostFleet, HostQuota
from rollout.sandbox.hosts import HostState
from sandbox_image.config import SlotLimits
from rollout.sandbox.slot_sandbox import SlotSandbox
from rollout.types import SandboxError, Slot

log = logging.getLogger(__name__)


class SlotPool:
    def __init__(self, fleet: HostFleet, limits: SlotLimits | None = None) -> None:
        self.fleet = fleet
        self.cfg = fleet.cfg
        self.limits = limits or SlotLimits()
        fleet.listener = self
        self._free: dict[str | None, collections.deque[tuple[str, int]]] = (
            collections.defaultdict(collections.deque))
        self._waiters: dict[str | None, collections.deque[asyncio.Future]] = (
            collections.defaultdict(collections.deque))
        self._resets: set[asyncio.Task[Any]] = set()
        # image -> slots whose background reset is in flight (supply on its way back)
        self._resetting: collections.Counter[str | None] = collections.Counter()
        self._started = False
        self._closed = False
        self._stop_task: asyncio.Task[None] | None = None
        self._counts: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_config(cls, cfg: BackendConfig, limits: SlotLimits | None = None, *,
                    run_id: str = "", quota: HostQuota | None = None) -> SlotPool:
        """A pool over the backend `cfg` describes, its hosts enforcing `limits`."""
        limits = limits or SlotLimits()
        backend = cfg.create(limits, run_id or uuid.uuid4().hex[:8])
        return cls(HostFleet(backend, cfg, quota), limits)

    @property
    def backend(self) -> Any:
        return self.fleet.backend

    @property
    def _hosts(self) -> dict[str, HostState]:
        return self.fleet.hosts

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring up `min_hosts` hosts of the default image."""
        if self._closed:
            raise SandboxError("this SlotPool was stopped; create a new one")
        if self._started:
            return
        self._started = True
        try:
            await self.fleet.start()
        except Exception as e:
            await self.stop()
            why = str(e) or (f"none started within backend.host_start_timeout="
                             f"{self.fleet.cfg.host_start_timeout:g}s"
                             if isinstance(e, TimeoutError) else type(e).__name__)
            raise SandboxError(f"sandbox pool could not start any host: {why}") from e

    async def stop(self) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._stop_task)

    async def _teardown(self) -> None:
        self._closed = True
        for t in list(self._resets):
            t.cancel()
        await asyncio.gather(*self._resets, return_exceptions=True)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(SandboxError("sandbox pool stopped"))
        await self.fleet.stop()

    # --- what the fleet tells us (FleetListener) ------------------------------------------

    def host_up(self, hs: HostState) -> None:
        hs.busy = hs.host.slots
        for index in range(hs.host.slots):
            self._give(hs, index)

    def start_failed(self, image: str | None, error: Exception) -> None:
        failure = SandboxError(f"could not start a sandbox host for image {image!r}: {error}")
        for fut in self._waiters.pop(image, collections.deque()):
            if not fut.done():
                fut.set_exception(failure)

    def demand(self) -> dict[str | None, int]:
        return {image: n for image, q in self._waiters.items() if (n := self._unmet(image)) > 0}

    def _unmet(self, image: str | None) -> int:
        """Waiters of `image` that the slots now being reset will not serve."""
        return len(self._waiters[image]) - self._resetting[image]

    # --- acquire / release ----------------------------------------------------------------

    async def acquire(self, trajectory_id: str, image: str | None = None,
                      timeout: float | None = None) -> Slot:
        """A free slot of a host of `image` (default image if None). Raises SandboxError if
        none becomes free within `timeout` or hosts of that image cannot be started. The
        returned slot's `waited` is the time spent queued for it."""
        if not self._started:
            await self.start()
        image = self.cfg.default_image if image is None else image
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + (self.cfg.acquire_timeout if timeout is None else timeout)
        while True:
            self._check_open()
            got = self._take_free(image)
            if got is None:
                got = await self._wait_for_slot(image, deadline)
                if got is None:
                    continue
            hs, index = got
            try:
                usable = await self.fleet.usable(hs)
            except BaseException:
                self._give(hs, index)
                raise
            if not usable:
                continue
            if hs.slot_image[index] != image:
                await self._move(hs, index, image)
            lease = uuid.uuid4().hex
            hs.leases[index] = lease
            hs.holders[index] = trajectory_id
            self._counts["acquires"] += 1
            waited = loop.time() - t0
            self._counts["wait_ms"] += int(waited * 1000)
            return Slot(host_id=hs.host_id, index=index, image=image, lease=lease,
                        waited=waited, url=hs.client.url,
                        key=hs.client.lease_key(index, lease))

    async def _wait_for_slot(self, image: str | None,
                             deadline: float) -> tuple[HostState, int] | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiters[image].append(fut)
        self.fleet.ensure(image, self._unmet(image))
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
            why = self.fleet.start_errors.get(image)
            raise SandboxError(
                f"no free sandbox slot for image {image!r} within the acquire timeout "
                f"({self.stats()['slots_in_use']} in use, {len(self._hosts)} hosts, "
                f"max_hosts={self.cfg.max_hosts})" + (f"; last host start failed: {why}"
                                                      if why else ""))
        return fut.result()  # raises the pool's error if it failed us

    def _return_unused(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
            self._give(*fut.result())

    async def release(self, slot: Slot, reset: bool = True) -> None:
        """End the lease; returns at once. With reset, the workspace is wiped in the
        background before anyone else gets the slot."""
        hs = self._validate(slot)
        hs.leases[slot.index] = None
        hs.holders[slot.index] = None
        self._counts["releases"] += 1
        if not reset or hs.draining():  # a draining host's slot is never handed out again
            self._give(hs, slot.index)
            return
        image = hs.slot_image[slot.index]
        self._resetting[image] += 1
        task = asyncio.ensure_future(self._reset_and_return(hs, slot.index, image, slot.lease))
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)
        task.add_done_callback(_finished)

    async def release_holder(self, prefix: str) -> int:
        """Release (with reset) every slot whose trajectory id starts with `prefix`.

        For holders that died without releasing (a lost worker process): their slots would
        otherwise stay leased forever. Returns how many slots were released.
        """
        mine = [Slot(host_id=hs.host_id, index=i, image=hs.slot_image[i], lease=lease)
                for hs in list(self._hosts.values())
                for i, (lease, holder) in enumerate(zip(hs.leases, hs.holders))
                if lease is not None and holder is not None and holder.startswith(prefix)]
        results = await asyncio.gather(*(self.release(s) for s in mine), return_exceptions=True)
        for s, r in zip(mine, results):
            if isinstance(r, Exception):
                log.warning("releasing %s/%d of a dead holder failed: %s", s.host_id, s.index, r)
        return len(mine)

    async def _move(self, hs: HostState, index: int, image: str | None) -> None:
        """Reset a reserved free slot into `image` (mix_images). A failure is the acquirer's
        SandboxError; the slot is quarantined (an unreachable host is suspected)."""
        task = asyncio.ensure_future(hs.client.reset(index, image=image or "host"))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The acquirer gave up: the slot is returned once the move is over.
            task.add_done_callback(lambda t: self._moved_unclaimed(t, hs, index, image))
            raise
        except ImageUnavailable as e:  # the slot is untouched: back to its own image's list
            self._give(hs, index)
            raise SandboxError(f"cannot run image {image!r}: {e}") from e
        except HostUnreachable as e:
            await self.fleet.suspect(hs)
            raise SandboxError(f"could not move slot {hs.host_id}/{index} to image "
                               f"{image!r}: {e}") from e
        except Exception as e:  # noqa: BLE001 - the slot's state is unknown: not reused
            log.error("moving slot %s/%d to image %r failed; slot quarantined: %s",
                      hs.host_id, index, image, e)
            raise SandboxError(f"could not move slot {hs.host_id}/{index} to image "
                               f"{image!r}: {e}") from e
        hs.slot_image[index] = image
        self._counts["image_moves"] += 1

    def _moved_unclaimed(self, task: asyncio.Future[Any], hs: HostState, index: int,
                         image: str | None) -> None:
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or (error is not None and not isinstance(error, ImageUnavailable)):
            log.error("moving slot %s/%d to image %r failed; slot quarantined: %s",
                      hs.host_id, index, image, error or "cancelled")
            return
        if error is None:
            hs.slot_image[index] = image
        self._give(hs, index)

    async def _reset_and_return(self, hs: HostState, index: int, image: str | None,
                                lease: str | None = None) -> None:
        """The background half of a release: reset (which ends `lease` on the server), then
        hand the slot on. On failure the slot is not reused (quarantined); nobody awaits
        this, so the failure is logged."""
        try:
            await hs.client.reset(index, lease=lease)
        except HostUnreachable as e:
            log.warning("reset of slot %s/%d: host did not answer (%s); slot not reused",
                        hs.host_id, index, e)
            await self.fleet.suspect(hs)
            return
        except Exception as e:  # noqa: BLE001 - a slot that failed reset must not be reused
            log.error("reset of slot %s/%d failed; slot quarantined: %s", hs.host_id, index, e)
            self._counts["reset_failures"] += 1
            return
        finally:
            self._resetting[image] -= 1
        self._counts["resets"] += 1
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

    # --- commands and files: one forwarding path ------------------------------------------

    async def call(self, slot: Slot, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run slot operation `op` (a `SLOT_OPS` name: exec, read_file, ...) on `slot`'s
        host. Every per-slot operation, local or through an actor, comes through here."""
        if op not in SLOT_OPS:
            raise SandboxError(f"unknown slot operation {op!r} (known: {', '.join(SLOT_OPS)})")
        hs = self._validate(slot)
        if op == "exec":
            kwargs["timeout"] = min(float(kwargs.get("timeout", 60.0)),
                                    self.limits.exec_timeout_cap)
        try:
            return await getattr(hs.client, op)(slot.index, *args, lease=slot.lease, **kwargs)
        except HostUnreachable as e:
            raise await self._unreachable(hs, f"slot {slot.host_id}/{slot.index}: host", e) from e

    async def unreachable(self, slot: Slot, error: str) -> SandboxError:
        """A holder that calls the slot's server itself could not reach it: the fleet
        judges the host as if the pool's own call had failed."""
        hs = self._validate(slot)
        return await self._unreachable(hs, f"slot {slot.host_id}/{slot.index}: host",
                                       HostUnreachable(error))

    async def _unreachable(self, hs: HostState, what: str, error: Exception) -> SandboxError:
        """A transport failure: let the fleet judge the host, and say what became of it."""
        dead = await self.fleet.suspect(hs)
        state = "died and is being replaced" if dead else "did not answer"
        return SandboxError(f"{what} {state} ({error})")

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
        acquires = self._counts["acquires"]
        resetting = sum(self._resetting.values())
        return {
            **self.fleet.stats(),
            "slots_total": total,
            "slots_in_use": in_use,
            # not held and not quarantined: free now, or free once its reset is over
            "slots_free": sum(1 for q in self._free.values() for h, _ in q if h in self._hosts)
            + resetting,
            "slots_resetting": resetting,
            "reset_failures": self._counts["reset_failures"],
            "images": per_image,
            "image_moves": self._counts["image_moves"],
            "acquires": acquires,
            "releases": self._counts["releases"],
            "acquire_wait_mean_ms": self._counts["wait_ms"] / acquires if acquires else 0.0,
            "waiting": sum(len(q) for q in self._waiters.values()),
            "stopped": self._closed,
        }

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("sandbox pool is stopped")

    def _validate(self, slot: Slot) -> HostState:
        self._check_open()
        if not isinstance(slot, Slot):
            raise SandboxError(f"expected a Slot from pool.acquire, got {type(slot).__name__}")
        hs = self._hosts.get(slot.host_id)
        if hs is None:
            why = self.fleet.gone.get(slot.host_id, "is unknown to this pool")
            raise SandboxError(f"slot {slot.host_id}/{slot.index} is stale: its host {why}")
        if not 0 <= slot.index < len(hs.leases) or hs.leases[slot.index] != slot.lease:
            raise SandboxError(f"slot {slot.host_id}/{slot.index} is not held under this lease "
                               "(already released, or never acquired from this pool)")
        return hs

    def _take_free(self, image: str | None) -> tuple[HostState, int] | None:
        """A free slot of `image`; with mix_images, else the longest-free slot of another.
        A draining host (past its retire time) hands out none."""
        queues = [self._free[image]]
        if self.cfg.mix_images:
            queues += [q for other, q in self._free.items() if other != image and q]
        for q in queues:
            while q:
                host_id, index = q.popleft()
                hs = self._hosts.get(host_id)
                if hs is not None and hs.alive and not hs.draining():
                    hs.busy += 1
                    return hs, index
        return None

    def _give(self, hs: HostState, index: int) -> None:
        """Hand a reserved slot to the longest waiter of its image, or put it back."""
        if not hs.alive or self._closed:
            return
        if hs.draining():  # past its retire time: the fleet retires it once all are back
            hs.busy -= 1
            return
        image = hs.slot_image[index]
        queues = [self._waiters[image]]
        if self.cfg.mix_images:  # a waiter of another image takes it (and moves it)
            queues += [q for other, q in self._waiters.items() if other != image and q]
        for waiters in queues:
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result((hs, index))
                    return
        hs.busy -= 1
        if hs.busy == 0:
            hs.idle_since = time.monotonic()
        self._free[image].append((hs.host_id, index))


def _finished(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception (already logged where it arose)."""
    if not task.cancelled():
        task.exception()

