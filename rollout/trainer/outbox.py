"""A durable, append-only outbox of scored groups.

Guarantees (tested in tests/trainer/test_outbox.py):
- `append` returns only after the group is on disk (flushed and fsynced): a group the sink
  accepted survives a crash of the process.
- `mark_delivered` appends an acknowledgement line; a reopened outbox lists as pending
  exactly the groups appended and not acknowledged, in their original order.
- A torn last line (crash mid-write) is ignored with a warning, never fatal.
- `has_task` tells whether a group for a task was ever accepted (duplicates after a
  re-lease are dropped by the sink, not sent twice).

File format: one JSON object per line, either {"seq": n, "task_id": ..., "group": {...}} or
{"ack": [n, ...]}.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: dict[int, tuple[str, dict[str, Any]]] = {}
        self._tasks: set[str] = set()
        self._next_seq = 0
        self.delivered_count = 0
        self._replay()
        self._fh = self.path.open("a", encoding="utf-8")

    def _replay(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("outbox %s: ignoring unreadable line %d", self.path, lineno)
                    continue
                if "ack" in rec:
                    for seq in rec["ack"]:
                        if self._pending.pop(seq, None) is not None:
                            self.delivered_count += 1
                elif "seq" in rec:
                    seq = int(rec["seq"])
                    self._pending[seq] = (rec["task_id"], rec["group"])
                    self._tasks.add(rec["task_id"])
                    self._next_seq = max(self._next_seq, seq + 1)
        if self._pending:
            log.info("outbox %s: %d undelivered group(s) to resend", self.path, len(self._pending))

    def _write(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def has_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    def append(self, task_id: str, group: dict[str, Any]) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._write({"seq": seq, "task_id": task_id, "group": group})
        self._pending[seq] = (task_id, group)
        self._tasks.add(task_id)
        return seq

    def mark_delivered(self, seqs: list[int]) -> None:
        seqs = [s for s in seqs if s in self._pending]
        if not seqs:
            return
        self._write({"ack": seqs})
        for s in seqs:
            del self._pending[s]
        self.delivered_count += len(seqs)

    def pending(self) -> list[tuple[int, str, dict[str, Any]]]:
        return [(seq, tid, g) for seq, (tid, g) in sorted(self._pending.items())]

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
