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
import uuid
from collections.abc import AsyncIterator
from typing import Any

from rollout.sandbox.client import SLOT_OPS, HostUnreachable, ImageUnavailable
from rollout.sandbox.config import BackendConfig
from rollout.sandbox.fleet import HostFleet, HostQuota
from rollout.sandbox.hosts import HostState
from rollout.sandbox.slot_sandbox import SlotSandbox
from rollout.sandbox.slot_table import Claim, SlotTable
from rollout.types import SandboxError, Slot
from sandbox_image.config import SlotLimits

log = logging.getLogger(__name__)


class SlotPool:
    """The async half around a `SlotTable` (which alone holds the slots' state): resets in
    the background, image moves, forwarding of slot operations, stats. It reads the fleet's
    hosts (address, client, liveness, retire time) and never changes them; the fleet tells
    it when a host joins or leaves (`host_up`, `host_gone`)."""

    def __init__(self, fleet: HostFleet, limits: SlotLimits | None = None) -> None:
        self.fleet = fleet
        self.cfg = fleet.cfg
        self.limits = limits or SlotLimits()
        self.table = SlotTable(mix_images=self.cfg.mix_images)
        fleet.listener = self
        self._resets: set[asyncio.Task[Any]] = set()
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
        self.table.fail_all_waiters(SandboxError("sandbox pool stopped"))
        await self.fleet.stop()

    # --- what the fleet tells us, and asks (FleetListener) --------------------------------

    def host_up(self, hs: HostState) -> None:
        for claim in self.table.add_host(hs.host_id, hs.host.slots, hs.image):
            self._give(claim)

    def host_gone(self, host_id: str) -> None:
        self.table.remove_host(host_id)

    def idle_since(self, host_id: str) -> float | None:
        return self.table.idle_since(host_id)

    def start_failed(self, image: str | None, error: Exception) -> None:
        self.table.fail_waiters(image, SandboxError(
            f"could not start a sandbox host for image {image!r}: {error}"))

    def demand(self) -> dict[str | None, int]:
        return self.table.demand()

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
            claim = self.table.take_free(image, self._serves)
            if claim is None:
                claim = await self._wait_for_slot(image, deadline)
                if claim is None:
                    continue
            hs = self._hosts.get(claim[0])
            if hs is None:
                continue  # its host left while the claim was on its way: try again
            try:
                usable = await self.fleet.usable(hs)
            except BaseException:
                self._give(claim)
                raise
            # Each await may have seen the host leave (its slots with it): then try again.
            if not usable or not self.table.has_host(hs.host_id):
                continue
            if self.table.image_of(claim) != image:
                await self._move(hs, claim, image)
                if not self.table.has_host(hs.host_id):
                    continue
            lease = self.table.lease(claim, trajectory_id)
            self._counts["acquires"] += 1
            waited = loop.time() - t0
            self._counts["wait_ms"] += int(waited * 1000)
            return Slot(host_id=hs.host_id, index=claim[1], image=image, lease=lease,
                        waited=waited, url=hs.client.url,
                        key=hs.client.lease_key(claim[1], lease))

    async def _wait_for_slot(self, image: str | None, deadline: float) -> Claim | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Claim] = loop.create_future()
        self.table.add_waiter(image, fut)
        self.fleet.ensure(image, self.table.unmet(image))
        remaining = deadline - loop.time()
        try:
            if remaining > 0:
                await asyncio.wait({fut}, timeout=remaining)
        finally:
            if not fut.done():
                fut.cancel()
                self.table.drop_waiter(image, fut)
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

    def _return_unused(self, fut: asyncio.Future[Claim]) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
            self._give(fut.result())

    async def release(self, slot: Slot, reset: bool = True) -> None:
        """End the lease; returns at once. With reset, the workspace is wiped in the
        background before anyone else gets the slot."""
        hs = self._validate(slot)
        claim = (slot.host_id, slot.index)
        # a draining host's slot is never handed out again: no reset
        reset = reset and not hs.draining()
        self.table.end_lease(claim, slot.lease, reset=reset)
        self._counts["releases"] += 1
        if not reset:
            self._give(claim)
            return
        task = asyncio.ensure_future(self._reset_and_return(hs, claim, slot.lease))
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)
        task.add_done_callback(_finished)

    async def release_holder(self, prefix: str) -> int:
        """Release (with reset) every slot whose trajectory id starts with `prefix`.

        For holders that died without releasing (a lost worker process): their slots would
        otherwise stay leased forever. Returns how many slots were released.
        """
        mine = [Slot(host_id=h.host_id, index=h.index, image=h.image, lease=h.lease)
                for h in self.table.held_by(prefix)]
        results = await asyncio.gather(*(self.release(s) for s in mine), return_exceptions=True)
        for s, r in zip(mine, results):
            if isinstance(r, Exception):
                log.warning("releasing %s/%d of a dead holder failed: %s", s.host_id, s.index, r)
        return len(mine)

    async def _move(self, hs: HostState, claim: Claim, image: str | None) -> None:
        """Reset a reserved free slot into `image` (mix_images). A failure is the acquirer's
        SandboxError; the slot is quarantined (an unreachable host is suspected)."""
        index = claim[1]
        task = asyncio.ensure_future(hs.client.reset(index, image=image or "host"))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The acquirer gave up: the slot is returned once the move is over.
            task.add_done_callback(lambda t: self._moved_unclaimed(t, hs, claim, image))
            raise
        except ImageUnavailable as e:  # the slot is untouched: back to its own image's list
            self._give(claim)
            raise SandboxError(f"cannot run image {image!r}: {e}") from e
        except HostUnreachable as e:
            self.table.quarantine(claim)
            await self.fleet.suspect(hs)
            raise SandboxError(f"could not move slot {hs.host_id}/{index} to image "
                               f"{image!r}: {e}") from e
        except Exception as e:  # noqa: BLE001 - the slot's state is unknown: not reused
            self.table.quarantine(claim)
            log.error("moving slot %s/%d to image %r failed; slot quarantined: %s",
                      hs.host_id, index, image, e)
            raise SandboxError(f"could not move slot {hs.host_id}/{index} to image "
                               f"{image!r}: {e}") from e
        self.table.moved(claim, image)
        self._counts["image_moves"] += 1

    def _moved_unclaimed(self, task: asyncio.Future[Any], hs: HostState, claim: Claim,
                         image: str | None) -> None:
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or (error is not None and not isinstance(error, ImageUnavailable)):
            log.error("moving slot %s/%d to image %r failed; slot quarantined: %s",
                      hs.host_id, claim[1], image, error or "cancelled")
            self.table.quarantine(claim)
            return
        if error is None:
            self.table.moved(claim, image)
        self._give(claim)

    async def _reset_and_return(self, hs: HostState, claim: Claim, lease: str) -> None:
        """The background half of a release: reset (which ends `lease` on the server), then
        hand the slot on. On failure the slot is not reused (quarantined); nobody awaits
        this, so the failure is logged."""
        try:
            await hs.client.reset(claim[1], lease=lease)
        except BaseException as e:
            self.table.quarantine(claim)
            if isinstance(e, HostUnreachable):
                log.warning("reset of slot %s/%d: host did not answer (%s); slot not reused",
                            hs.host_id, claim[1], e)
                await self.fleet.suspect(hs)
            elif isinstance(e, Exception):  # a slot that failed reset must not be reused
                log.error("reset of slot %s/%d failed; slot quarantined: %s",
                          hs.host_id, claim[1], e)
                self._counts["reset_failures"] += 1
            else:
                raise
            return
        self._counts["resets"] += 1
        self._give(claim)

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
        table = self.table.summary()
        acquires = self._counts["acquires"]
        return {
            **self.fleet.stats(),
            "slots_total": table["slots_total"],
            "slots_in_use": table["slots_in_use"],
            # not held and not quarantined: free now, or free once its reset is over
            "slots_free": table["slots_free"] + table["slots_resetting"],
            "slots_resetting": table["slots_resetting"],
            "reset_failures": self._counts["reset_failures"],
            "images": table["images"],
            "image_moves": self._counts["image_moves"],
            "acquires": acquires,
            "releases": self._counts["releases"],
            "acquire_wait_mean_ms": self._counts["wait_ms"] / acquires if acquires else 0.0,
            "waiting": table["waiting"],
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
        if not self.table.holds((slot.host_id, slot.index), slot.lease):
            raise SandboxError(f"slot {slot.host_id}/{slot.index} is not held under this lease "
                               "(already released, or never acquired from this pool)")
        return hs

    def _serves(self, host_id: str) -> bool:
        """Whether a free slot of this host may be handed out: not past its retire time."""
        hs = self._hosts.get(host_id)
        return hs is not None and not hs.draining()

    def _give(self, claim: Claim) -> None:
        """Hand a reserved slot on (to the longest waiter, else its free list); a draining
        host's is parked (the fleet retires the host once all are back)."""
        if self._closed:
            return
        hs = self._hosts.get(claim[0])
        if hs is None:
            return
        self.table.give(claim, draining=hs.draining())


def _finished(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception (already logged where it arose)."""
    if not task.cancelled():
        task.exception()
