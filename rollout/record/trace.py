"""One trajectory's events, recorded compactly for the run dir (events.jsonl).

A `Trace` is filled in by the code that does the work (the worker: acquire, send; the
rollout: prepare, verify; the agent loop: each turn and each tool call) and written once,
as one JSON line, when the trajectory's group is finished. Recording is an append to a list
(no I/O, no lock): the hot path pays a few microseconds per event.

Line format (version 1), one object per trajectory:

    {"v": 1, "id": trajectory id, "task": task id, "attempt": n, "worker": worker id,
     "image": task image, "kind": task kind, "t0": epoch seconds at start, "wall": seconds, "outcome": ...,
     "score": ..., "error": ..., "turns": n, "tokens": n, "group": the group's fate,
     "ev": [[kind, offset_s, duration_s, {fields}], ...]}

plus "casts": {kind: file under casts/} when the trajectory's terminals were recorded
(rollout/record/casts.py; in the line a worker sends, the cast texts, written out by the event log),
plus "queued": seconds it waited for its worker's `workers.trajectories_in_flight` share
before it started (t0 and wall start after that wait), when that bound is set.

Event kinds and their fields:
- acquire  {"waited": seconds queued in the pool}
- prepare  {"ok": bool}
- turn     {"n": turn, "tok": sampled tokens, "fin": finish reason, "text": clipped text}
- tool     {"name", "args", "exit": exit code of its command (None if none ran),
            "err": bool, "out": clipped observation}
- verify   {"score", "reason", "tests": {test: status}, "log": clipped log tail}
- send     {"result": "accepted" | a drop reason | "retry: why"}
"""

from __future__ import annotations

import time
from typing import Any

VERSION = 1
TEXT_CLIP = 4000  # characters of model text / tool output kept per event
ARGS_CLIP = 100_000  # bytes of one tool call's arguments kept (replay needs them whole)


def clip(text: str | None, limit: int = TEXT_CLIP) -> str:
    if not text or len(text) <= limit:
        return text or ""
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters not recorded ...]\n{text[-half:]}"


class Trace:
    """The events of one trajectory. Not thread-safe (one trajectory = one asyncio task)."""

    __slots__ = ("trajectory_id", "task_id", "t0", "_m0", "events", "last_exit", "info", "casts")

    def __init__(self, trajectory_id: str, task_id: str, **info: Any) -> None:
        self.trajectory_id = trajectory_id
        self.task_id = task_id
        self.t0 = time.time()
        self._m0 = time.monotonic()
        self.events: list[list[Any]] = []
        self.last_exit: int | None = None  # set by TracedSandbox on every exec
        self.info = info
        self.casts: dict[str, str] = {}  # kind -> asciinema cast text (rollout/record/casts.py)

    def restart(self, **info: Any) -> None:
        """Start the clock now (a trajectory that waited for its turn to run: its wall is its
        own run); `info` says why, e.g. queued=<seconds waited>."""
        self.t0, self._m0 = time.time(), time.monotonic()
        self.info.update(info)

    def add(self, kind: str, started: float, **fields: Any) -> None:
        """Record an event that began at monotonic time `started` and ends now."""
        now = time.monotonic()
        self.events.append([kind, round(started - self._m0, 4), round(now - started, 4), fields])

    def to_line(self, **result: Any) -> dict[str, Any]:
        """The trajectory's JSON object (see the module docstring); `result` adds outcome,
        score and the like."""
        line = {"v": VERSION, "id": self.trajectory_id, "task": self.task_id, **self.info,
                "t0": round(self.t0, 3), "wall": round(time.monotonic() - self._m0, 4),
                **result, "ev": self.events}
        if self.casts:  # the event log writes them to casts/ and keeps their file names
            line["casts"] = dict(self.casts)
        return line


def tool_fields(name: str, arguments: dict[str, Any], exit_code: int | None, is_error: bool,
                output: str) -> dict[str, Any]:
    args = arguments
    if sum(len(str(v)) for v in arguments.values()) > ARGS_CLIP:
        args = {k: clip(str(v), ARGS_CLIP) for k, v in arguments.items()}
    return {"name": name, "args": args, "exit": exit_code, "err": is_error, "out": clip(output)}


def verify_fields(score: float, details: dict[str, Any]) -> dict[str, Any]:
    tests = {**(details.get("fail_to_pass") or {}), **(details.get("pass_to_pass") or {})}
    return {"score": score, "reason": details.get("reason"), "tests": tests,
            "log": clip(details.get("log_tail") or "", 2000)}


class TracedSandbox:
    """A `Sandbox` that notes each command's exit code in the trace (the agent's tool events
    carry it); every operation is forwarded unchanged."""

    def __init__(self, inner: Any, trace: Trace) -> None:
        self._inner = inner
        self._trace = trace

    async def exec(self, command: str, **kwargs: Any) -> Any:
        result = await self._inner.exec(command, **kwargs)
        self._trace.last_exit = result.exit_code
        return result

    async def read_file(self, path: str, **kwargs: Any) -> bytes:
        return await self._inner.read_file(path, **kwargs)

    async def write_file(self, path: str, data: bytes) -> None:
        await self._inner.write_file(path, data)

    async def upload_archive(self, data: bytes, **kwargs: Any) -> None:
        await self._inner.upload_archive(data, **kwargs)

    def __getattr__(self, name: str) -> Any:  # list_dir, archive, slot, ...
        return getattr(self._inner, name)
