"""Stateful Python sessions: one long-lived interpreter per slot, supervised by the server.

Guarantees:
- A session is started exactly like a command of its slot (`SlotServer.launch_spec`: the
  same bubblewrap sandbox, cgroups, env and workspace), so a fork bomb or a memory hog in it
  exhausts only its own slot, and it sees nothing a command could not.
- Calls on one slot run one at a time; names defined by one call are there for the next.
- A call past its timeout kills the session (its whole process tree) and says so; a session
  that died (os._exit, the memory limit, a signal, a garbled reply) is reported as lost
  with the reason, and the next call starts a fresh one. The server itself never fails.
- `stop(i)` (slot reset, which every release does) and `close()` kill sessions; a killed
  server takes them along (--die-with-parent / pdeathsig, as for commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_image.limits import SlotCgroups
from sandbox_image.runner import Launch
from sandbox_image.spawn import spawn, watch_exit

log = logging.getLogger(__name__)

DRIVER = Path(__file__).with_name("python_driver.py").read_text()
# python3 first (what images have), else python; a clear line when there is neither.
_COMMAND = ('p=$(command -v python3 || command -v python) || { echo "no python interpreter '
            'in this slot (python3 or python on PATH)" >&2; exit 127; }; exec "$p" -u -c '
            + shlex.quote(DRIVER))
_REAP_WAIT = 10.0


@dataclass
class _Session:
    pid: int
    exited: asyncio.Future[int]
    requests: asyncio.WriteTransport
    replies: asyncio.StreamReader
    errors: asyncio.StreamReader


def _lost(message: str, started: float, **extra: Any) -> dict[str, Any]:
    return {"stdout": "", "stderr": "", "result": None, "error": None, "timed_out": False,
            "session_lost": True, "message": message,
            "duration": time.monotonic() - started, **extra}


class PythonSessions:
    """The sessions of one server's slots. `launch(i, command)` is how slot i starts a
    command (`SlotServer.launch_spec`); `running[i]` the pids a reset of slot i kills."""

    def __init__(self, slots: int, *, launch: Callable[[int, str], Launch], limits: SlotCgroups,
                 running: list[set[int]], output_cap: int, new_session: bool) -> None:
        self._launch = launch
        self._limits = limits
        self._running = running
        self._output_cap = output_cap
        self._new_session = new_session
        self._sessions: dict[int, _Session] = {}
        self._locks = [asyncio.Lock() for _ in range(slots)]

    def count(self) -> int:
        return sum(1 for s in self._sessions.values() if not s.exited.done())

    async def call(self, i: int, code: str, timeout: float) -> dict[str, Any]:
        async with self._locks[i]:
            return await self._call(i, code, timeout)

    async def _call(self, i: int, code: str, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        session = self._sessions.get(i)
        if session is None or session.exited.done():
            session = await self._start(i)
        limits = self._limits
        oom_before = limits.oom_kills(i)
        cap = self._output_cap
        session.requests.write(json.dumps({"code": code, "cap": cap}).encode() + b"\n")
        try:
            line = await asyncio.wait_for(session.replies.readline(), timeout)
        except TimeoutError:
            await self._kill(i, session)
            return _lost(f"timed out after {timeout:g}s: the Python session was killed and "
                         "its state is lost; the next call starts a fresh one", started,
                         timed_out=True)
        except (ValueError, asyncio.IncompleteReadError):  # a line over the reader's limit
            await self._kill(i, session)
            return _lost("the Python session wrote a garbled reply and was killed; its state "
                         "is lost; the next call starts a fresh one", started)
        if not line:
            why = await self._death(i, session, limits.oom_kills(i) > oom_before)
            return _lost(f"the Python session died ({why}); its state is lost; the next call "
                         "starts a fresh one", started)
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except ValueError:
            await self._kill(i, session)
            return _lost("the Python session wrote a garbled reply and was killed; its state "
                         "is lost; the next call starts a fresh one", started)
        return {"stdout": str(reply.get("stdout") or ""), "stderr": str(reply.get("stderr") or ""),
                "result": _opt_str(reply.get("result")), "error": _opt_str(reply.get("error")),
                "timed_out": False, "session_lost": False, "message": "",
                "duration": time.monotonic() - started}

    async def _start(self, i: int) -> _Session:
        launch = self._launch(i, _COMMAND)
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        try:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            fds += (in_r, in_w)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds += (out_r, out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds += (err_r, err_w)
            pid = spawn(launch.argv, env=launch.env, cwd=launch.cwd, stdout=out_w, stderr=err_w,
                        stdin=in_r, new_session=self._new_session,
                        preexec=launch.preexec, extra_actions=list(launch.actions))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        exited = watch_exit(pid)
        self._running[i].add(pid)
        replies = asyncio.StreamReader(limit=4 * self._output_cap + (1 << 16))
        errors = asyncio.StreamReader(limit=1 << 16)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(replies),
                                     os.fdopen(out_r, "rb", 0))
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(errors),
                                     os.fdopen(err_r, "rb", 0))
        requests, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(in_w, "wb", 0))
        session = self._sessions[i] = _Session(pid, exited, requests, replies, errors)
        log.info("slot %d: started a Python session (pid %d)", i, pid)
        return session

    async def _death(self, i: int, session: _Session, oom: bool) -> str:
        """Why a session whose reply pipe closed died (its process is reaped here)."""
        await self._kill(i, session)
        code = session.exited.result() if session.exited.done() else -signal.SIGKILL
        parts = ["the slot's memory limit was exceeded"] if oom else []
        parts.append(f"killed by signal {-code}" if code < 0
                     else f"the interpreter exited with code {code}")
        with contextlib.suppress(TimeoutError, ValueError):
            tail = await asyncio.wait_for(session.errors.read(2000), 1.0)
            if tail.strip():
                parts.append(tail.decode("utf-8", "replace").strip())
        return "; ".join(parts)

    async def _kill(self, i: int, session: _Session) -> None:
        if self._sessions.get(i) is session:
            del self._sessions[i]
        with contextlib.suppress(OSError):
            os.killpg(session.pid, signal.SIGKILL)
        session.requests.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(session.exited), _REAP_WAIT)
        self._running[i].discard(session.pid)

    async def stop(self, i: int) -> None:
        """Kill slot i's session, if any (a call waiting on it reports it lost)."""
        session = self._sessions.get(i)
        if session is not None:
            await self._kill(i, session)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(i) for i in list(self._sessions)))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
