"""The run's trajectory event log: `<run_dir>/events.jsonl`, one line per trajectory.

Guarantees:
- `add` never does I/O: it serialises and buffers (callers are actors on the hot path's
  side); a background task appends the buffer every `flush_interval` seconds in a thread.
- `close()` writes everything added before it; lines are whole (a reader may read a file
  being written and skip only a trailing partial line, see `read_events`).
- A write error is logged once and the lines are kept for the next try: the run goes on.
- A line's terminal recordings (`"casts": {kind: cast text}`, rollout/record/casts.py) are written
  to `<run_dir>/casts/<trajectory>.<kind>.cast` before the line that names them; the line
  keeps `"casts": {kind: "casts/<file>"}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from rollout.record.casts import CASTS_DIR, cast_name

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"


class EventLog:
    def __init__(self, run_dir: Path, flush_interval: float = 1.0) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.flush_interval = flush_interval
        self._buffer: list[str] = []
        self._casts: list[tuple[str, str]] = []  # (file name, text), written before the lines
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failed = False
        self.written = 0

    def add(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            casts = line.get("casts")
            if isinstance(casts, dict) and casts:
                named = {}
                for kind, text in casts.items():
                    name = cast_name(str(line.get("id", "")), str(kind))
                    self._casts.append((name, str(text)))
                    named[kind] = f"{CASTS_DIR}/{name}"
                line = {**line, "casts": named}
            self._buffer.append(json.dumps(line, separators=(",", ":"), default=str))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="event-log")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer and not self._casts:
                return
            lines, self._buffer = self._buffer, []
            casts, self._casts = self._casts, []
            try:
                await asyncio.to_thread(self._append, lines, casts)
                self.written += len(lines)
            except OSError as e:
                self._buffer[:0] = lines
                self._casts[:0] = casts
                if not self._failed:
                    log.error("cannot write %s (%s); events are kept in memory", self.path, e)
                    self._failed = True

    def _append(self, lines: list[str], casts: list[tuple[str, str]] = ()) -> None:
        if casts:
            folder = self.path.parent / CASTS_DIR
            folder.mkdir(exist_ok=True)
            for name, text in casts:
                (folder / name).write_text(text, encoding="utf-8")
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.flush()


def read_events(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The trajectory lines of a run dir (a partial last line of a file being written is
    skipped)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


class EventTail:
    """Reads the lines appended to a run's events.jsonl since the last `read()` (whole lines
    only: a partial last line waits for the next read)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for raw in data[:end].splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return out
