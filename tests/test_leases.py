from pathlib import Path

import pytest

from rollout.leases import TaskLedger
from rollout.types import Task


def tasks(n: int) -> list[Task]:
    return [Task(task_id=f"t{i}", kind="x", instruction="do it") for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_task_leased_to_one_holder_at_a_time():
    led = TaskLedger(tasks(5))
    a = led.lease("w1", 3)
    b = led.lease("w2", 3)
    assert len(a) == 3 and len(b) == 2
    assert not {x.task.task_id for x in a} & {x.task.task_id for x in b}
    assert led.lease("w3", 1) == []


def test_expired_lease_returns_task_and_counts_attempts():
    clock = Clock()
    led = TaskLedger(tasks(1), lease_seconds=10, max_attempts=2, clock=clock)
    (first,) = led.lease("w1")
    clock.now = 5
    assert led.renew([first.lease_id]) == []
    clock.now = 14  # renewed at 5: still held
    assert led.lease("w2") == []
    clock.now = 16
    (second,) = led.lease("w2")
    assert second.task.task_id == "t0" and second.attempt == 2
    assert led.complete(first.lease_id) is False  # the stale holder cannot complete it
    clock.now = 30
    assert led.lease("w3") == []
    assert led.dropped == {"t0": "lease expired (after 2 attempts)"}
    assert led.finished


def test_release_holder_and_fail_requeue_then_drop():
    led = TaskLedger(tasks(2), max_attempts=2)
    leases = led.lease("dead", 2)
    assert led.release_holder("dead") == 2
    again = led.lease("w", 2)
    assert sorted(x.task.task_id for x in again) == ["t0", "t1"]
    assert led.fail(again[0].lease_id, "sandbox_error")
    assert led.drop(again[1].lease_id, "wrong_group_size")
    p = led.progress()
    assert p["dropped"] == 2 and p["finished"]
    assert p["drop_reasons"] == {"sandbox_error (after 2 attempts)": 1, "wrong_group_size": 1}
    assert leases[0].lease_id not in (again[0].lease_id, again[1].lease_id)


def test_cursor_round_trip_resumes(tmp_path: Path):
    led = TaskLedger(tasks(4))
    a, b = led.lease("w", 2)
    led.complete(a.lease_id)
    led.drop(b.lease_id, "bad")
    led.lease("w", 1)  # in flight at the "crash"
    path = tmp_path / "queue.json"
    led.save(path)
    fresh = TaskLedger(tasks(4))
    assert fresh.load(path)
    rest = fresh.lease("w", 10)
    assert sorted(x.task.task_id for x in rest) == ["t2", "t3"]
    assert fresh.completed == {"t0": "delivered"} and fresh.dropped == {"t1": "bad"}


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate task ids"):
        TaskLedger(tasks(2) + tasks(1))


def test_limit_takes_the_next_unfinished_tasks(tmp_path: Path):
    led = TaskLedger(tasks(5), limit=2)
    a = led.lease("w", 5)
    assert [x.task.task_id for x in a] == ["t0", "t1"]
    for x in a:
        led.complete(x.lease_id)
    assert led.finished
    led.save(tmp_path / "q.json")
    nxt = TaskLedger(tasks(5), limit=2)
    nxt.load(tmp_path / "q.json")
    assert [x.task.task_id for x in nxt.lease("w", 5)] == ["t2", "t3"]


def test_give_back_does_not_count_an_attempt():
    led = TaskLedger(tasks(1), max_attempts=1)
    for _ in range(3):
        (lease,) = led.lease("w")
        assert lease.attempt == 1
        assert led.give_back(lease.lease_id)
    assert not led.dropped
