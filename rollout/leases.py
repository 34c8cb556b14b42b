"""Task leasing with expiry, attempt counts and a resumable cursor. Ray-free.

Guarantees (tested in tests/test_leases.py):
- A task is leased to at most one holder at a time.
- A lease that is not renewed before it expires, or whose holder is declared dead, puts the
  task back at the front of the pending queue; so does `fail` while attempts remain.
- After `max_attempts` failed or expired leases a task is dropped with the last reason.
- Every task ends in exactly one of: completed, dropped (with a reason). `finished` is true
  once every task of this run has (all tasks, or the first `limit` unfinished ones).
- A task dropped because its attempts ran out (`fail`, expiry, a dead holder: always an
  infrastructure failure) is also counted in `infra_dropped`, with the kind of failure;
  `drop` (a refusal retrying cannot fix, e.g. the trainer's rules) is not.
- `state_dict()` / `load_state` round-trip completed and dropped task ids and attempts, so
  a restarted run skips what is done instead of starting over. Leases in flight at a crash
  are simply pending again after a restart.
- `Cursor` keeps that state in a run dir at a cost per change that does not grow with the
  run: one appended journal line per change, the whole snapshot rewritten only once the
  journal has outgrown it (a crash at any point loses no finished change).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rollout.types import Task

log = logging.getLogger(__name__)


def failure_kind(reason: str) -> str:
    """The kind of an infrastructure failure reason: `sandbox_error: host lost (after 3
    attempts)` -> `sandbox_error`; `lease expired` -> `lease_expired`."""
    head = reason.split(":", 1)[0].split(" (", 1)[0].strip()
    if head.endswith(" died"):
        return "worker_died"
    return head.replace(" ", "_") or "unknown"


@dataclass
class Lease:
    lease_id: str
    task: Task
    holder: str
    attempt: int
    expires_at: float


class TaskLedger:
    def __init__(
        self,
        tasks: list[Task],
        *,
        lease_seconds: float = 600.0,
        max_attempts: int = 3,
        limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"duplicate task ids in the task list: {dupes}")
        self._tasks = {t.task_id: t for t in tasks}
        self._order = ids
        self._pending: collections.deque[str] = collections.deque(ids)
        self._leases: dict[str, Lease] = {}
        self._attempts: dict[str, int] = {}
        self.completed: dict[str, str] = {}  # task_id -> how (e.g. "delivered")
        self.dropped: dict[str, str] = {}  # task_id -> reason
        self.infra_dropped: set[str] = set()  # dropped after attempts ran out
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._clock = clock
        self._limit = limit
        self._changes: list[list[Any]] = []  # since the last take_changes(), for the journal
        self._apply_limit()

    def _apply_limit(self) -> None:
        """Keep only the first `limit` unfinished tasks for this run (run.max_groups)."""
        if self._limit is not None:
            self._pending = collections.deque(list(self._pending)[: self._limit])

    # -- leasing ----------------------------------------------------------------------------

    def lease(self, holder: str, n: int = 1) -> list[Lease]:
        self.expire()
        out: list[Lease] = []
        while self._pending and len(out) < n:
            task_id = self._pending.popleft()
            if task_id in self.completed or task_id in self.dropped:
                continue
            attempt = self._attempts.get(task_id, 0) + 1
            self._attempts[task_id] = attempt
            self._changes.append(["a", task_id, attempt])
            lease = Lease(
                lease_id=uuid.uuid4().hex[:12],
                task=self._tasks[task_id],
                holder=holder,
                attempt=attempt,
                expires_at=self._clock() + self._lease_seconds,
            )
            self._leases[lease.lease_id] = lease
            out.append(lease)
        return out

    def renew(self, lease_ids: list[str]) -> list[str]:
        """Extend live leases; returns the ids that are no longer held (expired or done)."""
        lost = []
        now = self._clock()
        for lid in lease_ids:
            lease = self._leases.get(lid)
            if lease is None:
                lost.append(lid)
            else:
                lease.expires_at = now + self._lease_seconds
        return lost

    def complete(self, lease_id: str, how: str = "delivered") -> bool:
        """Mark the leased task finished. False if the lease was not (or no longer) held."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self.completed[lease.task.task_id] = how
        self._changes.append(["c", lease.task.task_id, how])
        return True

    def drop(self, lease_id: str, reason: str) -> bool:
        """Finish the task as dropped for a reason that retrying cannot fix."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self.dropped[lease.task.task_id] = reason
        self._changes.append(["d", lease.task.task_id, reason, False])
        log.warning("task %s dropped: %s", lease.task.task_id, reason)
        return True

    def fail(self, lease_id: str, reason: str) -> bool:
        """Give the task back for another attempt, or drop it once attempts are used up."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self._requeue(lease, reason)
        return True

    def give_back(self, lease_id: str) -> bool:
        """Return a task untried (e.g. cancelled at shutdown): the attempt does not count."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        task_id = lease.task.task_id
        self._attempts[task_id] = max(0, self._attempts.get(task_id, 1) - 1)
        self._changes.append(["a", task_id, self._attempts[task_id]])
        self._pending.appendleft(task_id)
        return True

    def release_holder(self, holder: str, reason: str = "holder died") -> int:
        """Return every lease of a holder (e.g. a dead worker) to the queue."""
        mine = [lid for lid, lease in self._leases.items() if lease.holder == holder]
        for lid in mine:
            self._requeue(self._leases.pop(lid), reason)
        return len(mine)

    def expire(self) -> int:
        now = self._clock()
        late = [lid for lid, lease in self._leases.items() if lease.expires_at <= now]
        for lid in late:
            self._requeue(self._leases.pop(lid), "lease expired")
        return len(late)

    def _requeue(self, lease: Lease, reason: str) -> None:
        task_id = lease.task.task_id
        if lease.attempt >= self._max_attempts:
            self.dropped[task_id] = f"{reason} (after {lease.attempt} attempts)"
            self.infra_dropped.add(task_id)
            self._changes.append(["d", task_id, self.dropped[task_id], True])
            log.warning("task %s dropped: %s", task_id, self.dropped[task_id])
        else:
            log.info("task %s back in the queue: %s", task_id, reason)
            self._pending.appendleft(task_id)

    # -- progress ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """No task waiting and none leased: this run has nothing more to do."""
        live = any(t not in self.completed and t not in self.dropped for t in self._pending)
        return not live and not self._leases

    def progress(self) -> dict[str, Any]:
        reasons = collections.Counter(self.dropped.values())
        kinds = collections.Counter(failure_kind(self.dropped[t]) for t in self.infra_dropped
                                    if t in self.dropped)
        return {
            "total": len(self._tasks),
            "pending": sum(
                1 for t in self._pending if t not in self.completed and t not in self.dropped
            ),
            "leased": len(self._leases),
            "completed": len(self.completed),
            "dropped": len(self.dropped),
            "drop_reasons": dict(reasons),
            "infra_dropped": sum(kinds.values()),
            "infra_kinds": dict(kinds),
            "finished": self.finished,
        }

    # -- persistence ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "dropped": self.dropped,
            "infra_dropped": sorted(self.infra_dropped),
            "attempts": self._attempts,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        known = self._tasks.keys()
        self.completed = {k: v for k, v in state.get("completed", {}).items() if k in known}
        self.dropped = {k: v for k, v in state.get("dropped", {}).items() if k in known}
        self.infra_dropped = {k for k in state.get("infra_dropped", []) if k in self.dropped}
        self._attempts = {k: int(v) for k, v in state.get("attempts", {}).items() if k in known}
        done = self.completed.keys() | self.dropped.keys()
        self._pending = collections.deque(t for t in self._order if t not in done)
        self._apply_limit()

    def take_changes(self) -> list[list[Any]]:
        """The changes since the last call, as journal entries (see `Cursor`)."""
        out, self._changes = self._changes, []
        return out

    def save(self, path: Path) -> None:
        """Write the whole state as one snapshot, atomically (no journal)."""
        _write_atomic(path, self.state_dict())

    def load(self, path: Path) -> bool:
        """Load a snapshot and the journal written after it (see `Cursor`)."""
        if not path.exists() and not _journal_path(path).exists():
            return False
        self.load_state(read_state(path))
        return True


# -- the cursor on disk ---------------------------------------------------------------------

COMPACT_MIN = 1000  # journal lines always allowed before a snapshot is rewritten


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def _write_atomic(path: Path, state: dict[str, Any]) -> None:
    """A crash leaves the old or the new file, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    """A ledger's state from its snapshot plus the journal of the same generation (a journal
    left by a crash mid-compaction is older than the snapshot and is ignored; a torn last
    line ends the replay)."""
    path = Path(path)
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    completed = state.setdefault("completed", {})
    dropped = state.setdefault("dropped", {})
    infra = set(state.setdefault("infra_dropped", []))
    attempts = state.setdefault("attempts", {})
    journal = _journal_path(path)
    if journal.exists():
        with journal.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # the line a crash cut short; nothing after it was written
                if i == 0:
                    if entry != {"generation": state.get("generation", 0)}:
                        break  # not this snapshot's journal
                    continue
                op, task_id, *rest = entry
                if op == "a":
                    attempts[task_id] = rest[0]
                elif op == "c":
                    completed[task_id] = rest[0]
                elif op == "d":
                    dropped[task_id] = rest[0]
                    if rest[1]:
                        infra.add(task_id)
    state["infra_dropped"] = sorted(infra)
    return state


class Cursor:
    """A TaskLedger's state in a run dir: `path` holds a snapshot (replaced atomically) and
    `path.journal` one JSON line per change since (`TaskLedger.take_changes`). A change
    costs one appended, flushed line; the snapshot is rewritten only when the journal has
    more lines than the snapshot has entries (and `COMPACT_MIN`), so the cost per change
    stays flat however many tasks are finished. Each snapshot starts a new journal
    generation, so a crash between the two writes never replays an old journal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.journal = _journal_path(self.path)
        self._fh: Any = None
        self._lines = 0
        self._entries = 0
        self._generation = 0

    def compact(self, ledger: TaskLedger) -> None:
        """Write the whole state as a new snapshot and start its journal."""
        ledger.take_changes()
        state = ledger.state_dict()
        if self._fh is None and self.path.exists():  # continue after the run's last one
            with contextlib.suppress(ValueError, OSError):
                self._generation = max(self._generation,
                                       int(json.loads(self.path.read_text()).get("generation", 0)))
        self._generation += 1
        _write_atomic(self.path, {**state, "generation": self._generation})
        if self._fh is not None:
            self._fh.close()
        self._fh = self.journal.open("w", encoding="utf-8")
        self._fh.write(json.dumps({"generation": self._generation}) + "\n")
        self._fh.flush()
        self._lines = 0
        self._entries = len(state["completed"]) + len(state["dropped"]) + len(state["attempts"])

    def write(self, ledger: TaskLedger) -> None:
        """Persist the ledger's changes since the last write."""
        changes = ledger.take_changes()
        if not changes and self._fh is not None:
            return
        if self._fh is None or self._lines + len(changes) > max(COMPACT_MIN, self._entries):
            self.compact(ledger)  # the snapshot holds these changes too
            return
        self._fh.write("".join(json.dumps(c) + "\n" for c in changes))
        self._fh.flush()
        self._lines += len(changes)

    def close(self, ledger: TaskLedger) -> None:
        """A final snapshot (what a reader of `path` alone sees is then complete)."""
        self.compact(ledger)
        self._fh.close()
        self._fh = None
