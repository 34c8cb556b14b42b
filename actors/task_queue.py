"""TaskQueue: a Ray actor over a TaskLedger, persisting its cursor in the run dir (a
snapshot plus an append-only journal: `rollout.leases.Cursor`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from rollout.leases import Cursor, Lease, TaskLedger
from rollout.types import Task

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_concurrency=1)
class TaskQueue:
    """Serial actor: every call sees and leaves a consistent ledger, saved after each change
    (one journal line per change; the snapshot is rewritten only as the journal outgrows it)."""

    def __init__(self, tasks: list[Task], state_path: str, lease_seconds: float,
                 max_attempts: int, limit: int | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self._ledger = TaskLedger(tasks, lease_seconds=lease_seconds, max_attempts=max_attempts,
                                  limit=limit)
        self._path = Path(state_path)
        if self._ledger.load(self._path):
            p = self._ledger.progress()
            log.info("resuming: %d completed, %d dropped, %d to go",
                     p["completed"], p["dropped"], p["pending"])
        self._cursor = Cursor(self._path)
        self._cursor.compact(self._ledger)  # a fresh journal (a torn line of a crash is gone)

    def _save(self) -> None:
        self._cursor.write(self._ledger)

    def lease(self, holder: str, n: int = 1) -> list[Lease]:
        out = self._ledger.lease(holder, n)
        if out:
            self._save()  # attempts count across restarts
        return out

    def renew(self, lease_ids: list[str]) -> list[str]:
        return self._ledger.renew(lease_ids)

    def complete(self, lease_id: str, how: str = "delivered") -> bool:
        ok = self._ledger.complete(lease_id, how)
        self._save()
        return ok

    def drop(self, lease_id: str, reason: str) -> bool:
        ok = self._ledger.drop(lease_id, reason)
        self._save()
        return ok

    def fail(self, lease_id: str, reason: str) -> bool:
        ok = self._ledger.fail(lease_id, reason)
        self._save()
        return ok

    def give_back(self, lease_id: str) -> bool:
        ok = self._ledger.give_back(lease_id)
        self._save()
        return ok

    def release_holder(self, holder: str, reason: str = "worker died") -> int:
        n = self._ledger.release_holder(holder, reason)
        self._save()
        return n

    def progress(self) -> dict[str, Any]:
        if self._ledger.expire():
            self._save()
        return self._ledger.progress()

    def outcomes(self) -> dict[str, Any]:
        return {"completed": dict(self._ledger.completed), "dropped": dict(self._ledger.dropped)}

    def close(self) -> None:
        """Write a final snapshot (the journal is enough to resume; this makes it one file)."""
        self._cursor.close(self._ledger)
