"""`SlotTable`: the pool's slot state, synchronous, in one place.

It alone holds and changes the leases, the free lists (per image), the waiters (futures, in
FIFO order per image) and which slots each host has. Every method is plain (no awaits), so
each runs whole between two of the pool's awaits and no other coroutine sees a half-made
change. `SlotPool` does the I/O around it (resets, image moves, calls) and tells the table
what came of it; `HostFleet` tells it (through the pool) when a host joins or leaves.

A slot is in exactly one state:
- FREE: on its image's free list (exactly once), waiting for an acquire.
- RESERVED: off the free list for one acquirer (taken, or handed to one waiter), not leased
  yet; its acquirer leases it or gives it back.
- LEASED: held under one lease id, by one holder.
- RESETTING: released; its reset is in flight (supply on its way back, see `demand`).
- QUARANTINED: its reset or image move failed; never handed out again.
- PARKED: came back while its host was draining; never handed out again.
A slot of a host that left is gone with its host: every later call about it is a no-op or
says so (`holds` is False), and a claim on it that a waiter was given is void.

`busy(host)` counts its slots that are RESERVED, LEASED, RESETTING or QUARANTINED: a host is
idle (the fleet may retire it) only when that is 0.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

Claim = tuple[str, int]  # (host_id, slot index): a RESERVED slot, what a woken waiter gets
DEFAULT_IMAGE = "default"  # stats' name for slots of no named image (the backend's default)


class SlotState(enum.Enum):
    FREE = "free"
    RESERVED = "reserved"
    LEASED = "leased"
    RESETTING = "resetting"
    QUARANTINED = "quarantined"
    PARKED = "parked"


_BUSY = frozenset({SlotState.RESERVED, SlotState.LEASED, SlotState.RESETTING,
                   SlotState.QUARANTINED})


class SlotTableError(RuntimeError):
    """A transition the table's invariants forbid: a bug in its caller, never a user error."""


@dataclass
class _HostSlots:
    image: str | None  # the image the host was started for (stats group by it)
    state: list[SlotState]
    image_of: list[str | None]  # what each slot runs now (mix_images moves them)
    lease: list[str | None]
    holder: list[str | None]
    busy: int
    idle_since: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Held:
    """One leased slot, as `held_by` lists it."""

    host_id: str
    index: int
    image: str | None
    lease: str


class SlotTable:
    def __init__(self, mix_images: bool = False) -> None:
        self.mix_images = mix_images
        self._hosts: dict[str, _HostSlots] = {}
        self._free: dict[str | None, collections.deque[Claim]] = (
            collections.defaultdict(collections.deque))
        self._waiters: dict[str | None, collections.deque[asyncio.Future[Claim]]] = (
            collections.defaultdict(collections.deque))
        # image -> its slots being reset (supply on its way back)
        self._resetting: collections.Counter[str | None] = collections.Counter()

    # --- hosts ----------------------------------------------------------------------------

    def add_host(self, host_id: str, slots: int, image: str | None) -> list[Claim]:
        """A new host's slots, all RESERVED: the caller gives each (to waiters or the free
        list) with `give`."""
        if host_id in self._hosts:
            raise SlotTableError(f"host {host_id} is in the table already")
        self._hosts[host_id] = _HostSlots(
            image=image, state=[SlotState.RESERVED] * slots, image_of=[image] * slots,
            lease=[None] * slots, holder=[None] * slots, busy=slots)
        return [(host_id, i) for i in range(slots)]

    def remove_host(self, host_id: str) -> None:
        """The host left: its slots are gone, off the free lists, no longer supply."""
        h = self._hosts.pop(host_id, None)
        if h is None:
            return
        free_images = set()
        for i, state in enumerate(h.state):
            if state is SlotState.RESETTING:
                self._resetting[h.image_of[i]] -= 1
            elif state is SlotState.FREE:
                free_images.add(h.image_of[i])
        for image in free_images:
            q = self._free[image]
            keep = [c for c in q if c[0] != host_id]
            q.clear()
            q.extend(keep)

    def has_host(self, host_id: str) -> bool:
        return host_id in self._hosts

    def idle_since(self, host_id: str) -> float | None:
        """When the host's last busy slot came back; None while any is busy (or it left)."""
        h = self._hosts.get(host_id)
        return h.idle_since if h is not None and h.busy == 0 else None

    # --- hand-out -------------------------------------------------------------------------

    def take_free(self, image: str | None, serves: Callable[[str], bool]) -> Claim | None:
        """A FREE slot of `image` (longest free first), RESERVED now; with mix_images,
        else the longest-free slot of another image. A slot of a host that `serves` refuses
        (draining) is PARKED on the way."""
        queues = [self._free[image]]
        if self.mix_images:
            queues += [q for other, q in self._free.items() if other != image and q]
        for q in queues:
            while q:
                host_id, index = claim = q.popleft()
                h = self._hosts[host_id]
                self._expect(h, claim, SlotState.FREE)
                if serves(host_id):
                    self._set(h, index, SlotState.RESERVED)
                    return claim
                self._set(h, index, SlotState.PARKED)
        return None

    def give(self, claim: Claim, *, draining: bool = False) -> None:
        """A RESERVED slot (or a RESETTING one whose reset succeeded) goes to the longest
        waiter of its image (with mix_images, else of another image), else to its free
        list; a draining host's is PARKED. A slot of a host that left: nothing to do."""
        host_id, index = claim
        h = self._hosts.get(host_id)
        if h is None:
            return
        self._expect(h, claim, SlotState.RESERVED, SlotState.RESETTING)
        if h.state[index] is SlotState.RESETTING:
            self._resetting[h.image_of[index]] -= 1
            self._set(h, index, SlotState.RESERVED)
        if draining:
            self._set(h, index, SlotState.PARKED)
            return
        image = h.image_of[index]
        queues = [self._waiters[image]]
        if self.mix_images:  # a waiter of another image takes it (and moves it)
            queues += [q for other, q in self._waiters.items() if other != image and q]
        for waiters in queues:
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(claim)  # stays RESERVED, now for this waiter
                    return
        self._set(h, index, SlotState.FREE)
        self._free[image].append(claim)

    def lease(self, claim: Claim, holder: str) -> str:
        """Lease a RESERVED slot to `holder`: a new lease id, never one given before."""
        h = self._slot_host(claim)
        self._expect(h, claim, SlotState.RESERVED)
        lease = uuid.uuid4().hex
        index = claim[1]
        self._set(h, index, SlotState.LEASED)
        h.lease[index], h.holder[index] = lease, holder
        return lease

    def end_lease(self, claim: Claim, lease: str, *, reset: bool) -> None:
        """End `lease` (the caller checked it with `holds`): the slot is RESETTING if
        `reset`, else RESERVED (for the caller to `give`)."""
        h = self._slot_host(claim)
        if not self.holds(claim, lease):
            raise SlotTableError(f"slot {claim} is not held under lease {lease}")
        index = claim[1]
        h.lease[index] = h.holder[index] = None
        if reset:
            self._resetting[h.image_of[index]] += 1
            self._set(h, index, SlotState.RESETTING)
        else:
            self._set(h, index, SlotState.RESERVED)

    def quarantine(self, claim: Claim) -> None:
        """A RESERVED or RESETTING slot whose state is unknown (a failed reset or move): never
        handed out again. Its host stays busy. Nothing to do if its host left."""
        h = self._hosts.get(claim[0])
        if h is None:
            return
        self._expect(h, claim, SlotState.RESERVED, SlotState.RESETTING)
        if h.state[claim[1]] is SlotState.RESETTING:
            self._resetting[h.image_of[claim[1]]] -= 1
        self._set(h, claim[1], SlotState.QUARANTINED)

    def moved(self, claim: Claim, image: str | None) -> None:
        """A RESERVED slot now runs `image`. Nothing to do if its host left."""
        h = self._hosts.get(claim[0])
        if h is None:
            return
        self._expect(h, claim, SlotState.RESERVED)
        h.image_of[claim[1]] = image

    # --- reading --------------------------------------------------------------------------

    def holds(self, claim: Claim, lease: str) -> bool:
        """Whether `claim`'s slot is LEASED under `lease` now."""
        h = self._hosts.get(claim[0])
        index = claim[1]
        return (h is not None and 0 <= index < len(h.state)
                and h.state[index] is SlotState.LEASED and h.lease[index] == lease)

    def image_of(self, claim: Claim) -> str | None:
        return self._slot_host(claim).image_of[claim[1]]

    def state(self, claim: Claim) -> SlotState | None:
        """The slot's state; None once its host left."""
        h = self._hosts.get(claim[0])
        return None if h is None else h.state[claim[1]]

    def held_by(self, prefix: str) -> list[Held]:
        """The leased slots whose holder starts with `prefix`."""
        return [Held(host_id, i, h.image_of[i], lease)
                for host_id, h in self._hosts.items()
                for i, (lease, holder) in enumerate(zip(h.lease, h.holder))
                if lease is not None and holder is not None and holder.startswith(prefix)]

    def summary(self) -> dict[str, object]:
        """Counts for the pool's stats."""
        per_image: dict[str, dict[str, int]] = {}
        in_use = total = free = 0

        def of(image: str | None) -> dict[str, int]:
            return per_image.setdefault(DEFAULT_IMAGE if image is None else image,
                                        {"hosts": 0, "slots": 0, "in_use": 0})

        for h in self._hosts.values():
            of(h.image)["hosts"] += 1
            # a slot counts under the image it runs now (mix_images moves slots between images)
            for state, image in zip(h.state, h.image_of):
                d = of(image)
                d["slots"] += 1
                d["in_use"] += state is SlotState.LEASED
            in_use += h.state.count(SlotState.LEASED)
            total += len(h.state)
            free += h.state.count(SlotState.FREE)
        return {"slots_total": total, "slots_in_use": in_use, "slots_free": free,
                "slots_resetting": sum(self._resetting.values()), "images": per_image,
                "waiting": sum(len(q) for q in self._waiters.values())}

    # --- waiters --------------------------------------------------------------------------

    def add_waiter(self, image: str | None, fut: asyncio.Future[Claim]) -> None:
        """`fut` gets the next slot of `image` that `give` hands on (a RESERVED claim)."""
        self._waiters[image].append(fut)

    def drop_waiter(self, image: str | None, fut: asyncio.Future[Claim]) -> None:
        """A waiter that gave up before it was given a slot."""
        q = self._waiters.get(image)
        if q is not None and fut in q:
            q.remove(fut)

    def fail_waiters(self, image: str | None, error: BaseException) -> None:
        """Every waiter of `image` gets `error`."""
        _fail(self._waiters.pop(image, collections.deque()), error)

    def fail_all_waiters(self, error: BaseException) -> None:
        for q in self._waiters.values():
            _fail(q, error)

    def unmet(self, image: str | None) -> int:
        """Waiters of `image` that the slots now being reset will not serve."""
        return len(self._waiters.get(image, ())) - self._resetting[image]

    def demand(self) -> dict[str | None, int]:
        """Unmet waiters per image (only images with some)."""
        return {image: n for image in list(self._waiters) if (n := self.unmet(image)) > 0}

    # --- invariants -----------------------------------------------------------------------

    def _slot_host(self, claim: Claim) -> _HostSlots:
        h = self._hosts.get(claim[0])
        if h is None or not 0 <= claim[1] < len(h.state):
            raise SlotTableError(f"slot {claim} is not in the table")
        return h

    @staticmethod
    def _expect(h: _HostSlots, claim: Claim, *states: SlotState) -> None:
        if h.state[claim[1]] not in states:
            raise SlotTableError(f"slot {claim} is {h.state[claim[1]].value}, expected "
                                 + " or ".join(s.value for s in states))

    @staticmethod
    def _set(h: _HostSlots, index: int, state: SlotState) -> None:
        """The one place a slot changes state, keeping its host's busy count."""
        was = h.state[index]
        h.state[index] = state
        h.busy += (state in _BUSY) - (was in _BUSY)
        if h.busy == 0 and state is SlotState.FREE:
            h.idle_since = time.monotonic()


def _fail(waiters: collections.deque[asyncio.Future[Claim]], error: BaseException) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_exception(error)
