import json
from pathlib import Path

import pytest

from rollout.leases import COMPACT_MIN, Cursor, TaskLedger
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


# -- the cursor on disk: snapshot + journal --------------------------------------------------

def _state(led: TaskLedger) -> dict:
    s = led.state_dict()
    return {**s, "infra_dropped": sorted(s["infra_dropped"])}


def test_journal_replays_every_kind_of_change(tmp_path: Path):
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(6), max_attempts=1)
    cur = Cursor(path)
    cur.compact(led)
    a, b, c, d = led.lease("w", 4)
    cur.write(led)
    led.complete(a.lease_id, "duplicate")
    led.drop(b.lease_id, "too long")
    led.fail(c.lease_id, "sandbox_error: host lost")  # attempts used up: an infra drop
    led.give_back(d.lease_id)  # its attempt does not count
    cur.write(led)
    assert json.loads(path.read_text())["completed"] == {}  # all of it is in the journal
    fresh = TaskLedger(tasks(6), max_attempts=1)
    assert fresh.load(path)
    assert _state(fresh) == _state(led)
    assert fresh.infra_dropped == {"t2"} and fresh.dropped["t2"].startswith("sandbox_error")
    assert [x.task.task_id for x in fresh.lease("w", 10)] == ["t3", "t4", "t5"]


def test_a_change_appends_a_line_and_leaves_a_big_snapshot_alone(tmp_path: Path):
    n = COMPACT_MIN * 3
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(n + 50))
    for lease in led.lease("w", n):
        led.complete(lease.lease_id)
    cur = Cursor(path)
    cur.compact(led)
    snapshot = path.read_bytes()
    for _ in range(40):
        (lease,) = led.lease("w", 1)
        led.complete(lease.lease_id)
        cur.write(led)
    assert path.read_bytes() == snapshot  # not rewritten per change
    assert len(cur.journal.read_text().splitlines()) == 1 + 80  # header + lease and complete each
    fresh = TaskLedger(tasks(n + 50))
    fresh.load(path)
    assert len(fresh.completed) == n + 40


def test_the_journal_is_compacted_once_it_outgrows_the_snapshot(tmp_path: Path):
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(COMPACT_MIN + 10))
    cur = Cursor(path)
    cur.compact(led)
    for _ in range(COMPACT_MIN // 2 + 5):  # two lines each: past COMPACT_MIN
        (lease,) = led.lease("w", 1)
        led.complete(lease.lease_id)
        cur.write(led)
    assert len(json.loads(path.read_text())["completed"]) > 0
    assert len(cur.journal.read_text().splitlines()) < COMPACT_MIN
    fresh = TaskLedger(tasks(COMPACT_MIN + 10))
    fresh.load(path)
    assert _state(fresh) == _state(led)


def _complete_next(led: TaskLedger, cur: Cursor) -> None:
    """Lease the next task, complete it, persist."""
    (lease,) = led.lease("w", 1)
    led.complete(lease.lease_id)
    cur.write(led)


def _cursor(path: Path, led: TaskLedger) -> Cursor:
    cur = Cursor(path)
    cur.compact(led)
    return cur


def _loaded(path: Path, n: int) -> TaskLedger:
    led = TaskLedger(tasks(n))
    assert led.load(path)
    return led


def test_a_torn_last_line_is_ignored_and_the_rest_replayed(tmp_path: Path):
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(3))
    cur = _cursor(path, led)
    _complete_next(led, cur)
    with cur.journal.open("a") as fh:
        fh.write('["c", "t1", "deliv')  # the crash cut this write short
    assert _loaded(path, 3).completed == {"t0": "delivered"}


def test_a_journal_older_than_the_snapshot_is_not_replayed(tmp_path: Path):
    """A crash between writing a new snapshot and starting its journal."""
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(3))
    cur = _cursor(path, led)
    (a,) = led.lease("w", 1)
    led.give_back(a.lease_id)  # attempts back to 0 ...
    cur.write(led)
    old_journal = cur.journal.read_text()  # ... in a journal that says a=1, then a=0
    (a,) = led.lease("w", 1)
    led.complete(a.lease_id)
    cur.compact(led)
    cur.journal.write_text(old_journal)  # the new journal was never started
    fresh = _loaded(path, 3)
    assert fresh.completed == {"t0": "delivered"} and fresh.state_dict()["attempts"]["t0"] == 1


def test_a_resumed_queue_continues_the_generations(tmp_path: Path):
    path = tmp_path / "queue_state.json"
    led = TaskLedger(tasks(3))
    _complete_next(led, _cursor(path, led))
    again = _loaded(path, 3)  # a restarted run: load, then a fresh cursor
    _complete_next(again, _cursor(path, again))
    assert _loaded(path, 3).completed == {"t0": "delivered", "t1": "delivered"}
