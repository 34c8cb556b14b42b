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
"""

from __future__ import annotations

import collections
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
        return True

    def drop(self, lease_id: str, reason: str) -> bool:
        """Finish the task as dropped for a reason that retrying cannot fix."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self.dropped[lease.task.task_id] = reason
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

    def save(self, path: Path) -> None:
        """Write the cursor atomically (a crash leaves the old or the new file, never half)."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        os.replace(tmp, path)

    def load(self, path: Path) -> bool:
        if not path.exists():
            return False
        self.load_state(json.loads(path.read_text()))
        return True
