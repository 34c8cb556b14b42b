"""`SlotTable` in-process (no hosts, no I/O): hand-out, leases, waiters and host removal keep
every slot in exactly one state and hand each to one holder."""

from __future__ import annotations

import asyncio

import pytest

from rollout.sandbox.slot_table import SlotState, SlotTable, SlotTableError


def serves_all(host_id: str) -> bool:
    return True


def table_with(host_id: str = "h1", slots: int = 2, image: str | None = "a",
               mix_images: bool = False) -> SlotTable:
    table = SlotTable(mix_images=mix_images)
    for claim in table.add_host(host_id, slots, image):
        table.give(claim)
    return table


def test_acquire_lease_release_and_reset_return_the_slot_to_the_free_list() -> None:
    table = table_with(slots=1)
    claim = table.take_free("a", serves_all)
    assert claim == ("h1", 0) and table.take_free("a", serves_all) is None
    assert table.idle_since("h1") is None  # a reserved slot makes its host busy
    lease = table.lease(claim, "t1")
    assert table.holds(claim, lease) and table.summary()["slots_in_use"] == 1
    table.end_lease(claim, lease, reset=True)
    assert not table.holds(claim, lease)
    assert table.state(claim) is SlotState.RESETTING
    assert table.take_free("a", serves_all) is None  # not before its reset is over
    table.give(claim)  # the reset succeeded
    assert table.idle_since("h1") is not None
    assert table.take_free("a", serves_all) == claim


def test_a_slot_is_never_given_twice_nor_leased_twice() -> None:
    table = table_with(slots=1)
    claim = table.take_free("a", serves_all)
    lease = table.lease(claim, "t1")
    with pytest.raises(SlotTableError):
        table.lease(claim, "t2")
    with pytest.raises(SlotTableError):
        table.give(claim)  # a leased slot goes back only through end_lease
    with pytest.raises(SlotTableError):
        table.end_lease(claim, "not-the-lease", reset=False)
    table.end_lease(claim, lease, reset=False)
    table.give(claim)
    with pytest.raises(SlotTableError):
        table.give(claim)  # already free: a second give would list it twice
    assert table.summary()["slots_free"] == 1


async def test_waiters_are_served_first_come_first_served_one_slot_each() -> None:
    table = table_with(slots=2)
    held = [table.take_free("a", serves_all) for _ in range(2)]
    leases = [table.lease(c, f"t{i}") for i, c in enumerate(held)]
    loop = asyncio.get_running_loop()
    waiters = [loop.create_future() for _ in range(3)]
    for fut in waiters:
        table.add_waiter("a", fut)
    assert table.demand() == {"a": 3}
    for claim, lease in zip(held, leases):
        table.end_lease(claim, lease, reset=False)
        table.give(claim)
    assert [f.result() for f in waiters[:2]] == held  # in the order they came
    assert not waiters[2].done()
    assert table.summary()["waiting"] == 1
    assert table.summary()["slots_free"] == 0  # each slot went to a waiter, not the list


async def test_a_cancelled_waiter_does_not_lose_the_slot() -> None:
    table = table_with(slots=1)
    claim = table.take_free("a", serves_all)
    lease = table.lease(claim, "t1")
    loop = asyncio.get_running_loop()
    gave_up, next_one = loop.create_future(), loop.create_future()
    table.add_waiter("a", gave_up)
    table.add_waiter("a", next_one)
    gave_up.cancel()  # its acquire timed out; the pool has not dropped it yet
    table.end_lease(claim, lease, reset=False)
    table.give(claim)
    assert next_one.result() == claim
    table.drop_waiter("a", gave_up)  # nothing left to drop: no error


async def test_slots_being_reset_count_as_supply_on_the_way() -> None:
    table = table_with(slots=1)
    claim = table.take_free("a", serves_all)
    lease = table.lease(claim, "t1")
    table.end_lease(claim, lease, reset=True)
    table.add_waiter("a", asyncio.get_running_loop().create_future())
    assert table.unmet("a") == 0 and table.demand() == {}
    table.quarantine(claim)  # the reset failed: no longer on its way
    assert table.demand() == {"a": 1}
    assert table.idle_since("h1") is None  # a quarantined slot keeps its host busy


async def test_removing_a_host_voids_its_slots_and_the_claims_on_them() -> None:
    table = SlotTable()
    for host in ("h1", "h2"):
        for claim in table.add_host(host, 2, "a"):
            table.give(claim)
    claim = table.take_free("a", serves_all)
    assert claim == ("h1", 0)
    lease = table.lease(claim, "t1")
    fut = asyncio.get_running_loop().create_future()
    table.end_lease(claim, lease, reset=True)
    table.add_waiter("a", fut)
    table.remove_host("h1")
    # Its free slot left the list, its reset no longer counts as supply, and a claim on it
    # that a waiter was given (or a reset that ends later) changes nothing.
    assert not table.has_host("h1") and table.state(claim) is None
    assert table.demand() == {"a": 1}
    table.give(claim)
    table.quarantine(claim)
    assert not fut.done()
    assert {table.take_free("a", serves_all) for _ in range(2)} == {("h2", 0), ("h2", 1)}
    assert table.summary()["slots_total"] == 2


def test_a_draining_host_hands_out_no_slot_and_becomes_idle_when_all_are_back() -> None:
    table = table_with(slots=2)
    held = table.take_free("a", serves_all)
    lease = table.lease(held, "t1")
    assert table.take_free("a", lambda host_id: False) is None  # its free slot is parked
    assert table.idle_since("h1") is None
    table.end_lease(held, lease, reset=False)
    table.give(held, draining=True)
    assert table.state(held) is SlotState.PARKED
    assert table.idle_since("h1") is not None


def test_with_mix_images_a_slot_of_another_image_is_handed_out() -> None:
    table = table_with(slots=1, image="a", mix_images=True)
    claim = table.take_free("b", serves_all)
    assert claim == ("h1", 0)
    table.moved(claim, "b")
    assert table.image_of(claim) == "b"
    assert SlotTable().take_free("b", serves_all) is None


def test_lease_ids_are_never_reused() -> None:
    table = table_with(slots=1)
    seen = set()
    for i in range(500):
        claim = table.take_free("a", serves_all)
        lease = table.lease(claim, f"t{i}")
        seen.add(lease)
        table.end_lease(claim, lease, reset=False)
        table.give(claim)
    assert len(seen) == 500


def test_held_by_finds_a_dead_holders_slots() -> None:
    table = table_with(slots=2)
    a, b = (table.take_free("a", serves_all) for _ in range(2))
    table.lease(a, "worker-1/t1")
    table.lease(b, "worker-2/t1")
    (held,) = table.held_by("worker-1/")
    assert (held.host_id, held.index, held.image) == ("h1", 0, "a")
    assert table.holds(a, held.lease)


def test_stats_count_a_slot_under_the_image_it_runs_now() -> None:
    table = table_with(slots=2, image=None, mix_images=True)  # the default image's host
    claim = table.take_free("py311", serves_all)  # another image takes a default slot
    table.moved(claim, "py311")
    table.lease(claim, "t1")
    images = table.summary()["images"]
    assert images == {"default": {"hosts": 1, "slots": 1, "in_use": 0},
                      "py311": {"hosts": 0, "slots": 1, "in_use": 1}}
