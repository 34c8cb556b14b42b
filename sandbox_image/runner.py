"""Run one command: capped output, a timeout that kills the whole process tree.

Guarantees:
- Memory use per command is bounded by 2 x `output_cap` whatever the command prints;
  a command that prints more than `output_kill` bytes in total is killed.
- When `run_command` returns, the command's process group has been SIGKILLed if it was
  still alive; under bubblewrap the command's pid namespace dies with it, so background
  children (`sleep 1000 &`) never survive the command. The child is reaped even if the
  caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from sandbox_image.spawn import spawn, watch_exit

# How long to wait for pipes to close after the main process exited (only matters when a
# child escaped the process group without isolation).
_PIPE_GRACE = 1.0


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        # Flat fields only: cheaper than dataclasses.asdict's recursive copy.
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Launch:
    """A slot process ready to spawn: argv wrapped in its sandbox and cgroups, env, cwd."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    preexec: Callable[[], None] | None
    join: Callable[[int], None] | None = None  # see run_command


_READ_SIZE = 256 * 1024


class _Capture:
    """Keeps the first `cap` bytes of each stream; calls `on_excess` once the streams
    together exceed `kill_at` bytes."""

    def __init__(self, cap: int, kill_at: int, on_excess: Callable[[], None]) -> None:
        self.cap = cap
        self.kill_at = kill_at
        self.on_excess = on_excess
        self.buffers = {1: bytearray(), 2: bytearray()}
        self.totals = {1: 0, 2: 0}
        self.output_killed = False

    def feed(self, stream: int, data: bytes) -> None:
        buf = self.buffers[stream]
        room = self.cap - len(buf)
        if room > 0:
            buf += data[:room]
        self.totals[stream] += len(data)
        if not self.output_killed and self.totals[1] + self.totals[2] > self.kill_at:
            self.output_killed = True
            self.on_excess()

    def text(self, stream: int) -> tuple[str, bool]:
        data = bytes(self.buffers[stream])
        text = data.decode("utf-8", errors="replace")
        total = self.totals[stream]
        if total > len(data):
            text += f"\n[output truncated: showing {len(data)} of {total} bytes]"
            return text, True
        return text, False


class _PipeReaders:
    """Reads the command's stdout/stderr pipes from the event loop into a _Capture."""

    def __init__(self, fds: dict[int, int], capture: _Capture) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds = dict(fds)  # stream (1|2) -> read end
        self.closed = self._loop.create_future()
        for stream, fd in self._fds.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._ready, stream, fd, capture)

    def _ready(self, stream: int, fd: int, capture: _Capture) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            capture.feed(stream, data)
        else:
            self._close(stream)

    def _close(self, stream: int) -> None:
        fd = self._fds.pop(stream, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        if not self._fds and not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        for stream in list(self._fds):
            self._close(stream)


# The fds bwrap gets for `--info-fd` / `--block-fd` when the server joins the sandbox to the
# slot's cgroups from outside (see _Join); the sources are duplicated above them first.
INFO_FD, BLOCK_FD = 3, 4
_FD_FLOOR = 10


class _Join:
    """Puts a sandbox into its slot's cgroups before it runs anything, with no wrapper
    process: bwrap reports its first process's pid on the info fd, then blocks on the block
    fd; `join(pid)` moves it (the command and all it forks inherit the groups) and one byte
    lets it go on. bwrap goes on at EOF of the block fd too, so a failed join kills the
    process group *before* the block fd is closed: an unjoined command never runs."""

    def __init__(self, join: Callable[[int], None]) -> None:
        self._join = join
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        block_r, block_w = os.pipe2(os.O_CLOEXEC)
        self._fds = [info_r, block_w]
        self._child = [fcntl.fcntl(info_w, fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR),
                       fcntl.fcntl(block_r, fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR)]
        for fd in (info_w, block_r):
            os.close(fd)
        self.extra_fds = ((self._child[0], INFO_FD), (self._child[1], BLOCK_FD))
        self.error: str | None = None
        self._info = bytearray()
        self._loop = asyncio.get_running_loop()
        self.done = self._loop.create_future()

    def started(self, pid: int) -> None:
        """The sandbox was spawned as `pid` (its process group)."""
        for fd in self._child:
            os.close(fd)
        self._child = []
        self._pid = pid
        os.set_blocking(self._fds[0], False)
        self._loop.add_reader(self._fds[0], self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fds[0], 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._info += data
            return
        self._loop.remove_reader(self._fds[0])
        try:
            child = int(json.loads(self._info)["child-pid"]) if self._info else None
        except (ValueError, KeyError, TypeError):
            child = None
        if child is not None:  # else bwrap failed before its sandbox existed: it says why
            try:
                self._join(child)
            except OSError as e:
                self.error = f"cannot join the slot's cgroups: {e}"
                _killpg(self._pid)
            else:
                with contextlib.suppress(OSError):  # the sandbox died meanwhile
                    os.write(self._fds[1], b"1")
        self.close()

    def close(self) -> None:
        """Idempotent; callers kill the process group first if the join did not finish."""
        if self._fds and not self.done.done():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._fds[0])
        for fd in [*self._fds, *self._child]:
            os.close(fd)
        self._fds, self._child = [], []
        if not self.done.done():
            self.done.set_result(None)


def _killpg(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


async def _all_done(exited: asyncio.Future[int], sync: _Join | None) -> None:
    if sync is not None:
        await asyncio.shield(sync.done)
    await asyncio.shield(exited)


async def run_command(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    timeout: float,
    output_cap: int,
    output_kill: int,
    preexec: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    oom_check: Callable[[], bool] | None = None,
    new_session: bool = False,
    join: Callable[[int], None] | None = None,
) -> CommandResult:
    """Run argv (already wrapped in the sandbox; argv[0] a path) and collect its result.

    The command gets its own process group (one killpg reaches the tree), or its own
    session if `new_session` (see spawn.detach_from_terminal). `join`: argv is a bwrap
    started with `--info-fd INFO_FD --block-fd BLOCK_FD`, joined to its cgroups by `join`
    (see _Join)."""
    started = time.monotonic()
    capture = _Capture(output_cap, output_kill, lambda: _killpg(pid))
    fds: list[int] = []
    sync: _Join | None = None
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += (err_r, err_w)
        if join is not None:
            sync = _Join(join)
        pid = spawn(argv, env=env, cwd=cwd, stdout=out_w, stderr=err_w,
                    new_session=new_session, preexec=preexec,
                    extra_fds=sync.extra_fds if sync else ())
    except BaseException:
        for fd in fds:
            os.close(fd)
        if sync is not None:
            sync.close()
        raise
    os.close(out_w)
    os.close(err_w)
    exited = watch_exit(pid)
    pipes = _PipeReaders({1: out_r, 2: err_r}, capture)
    if sync is not None:
        sync.started(pid)
    if on_start:
        on_start(pid)
    timed_out = False
    try:
        try:
            await asyncio.wait_for(_all_done(exited, sync), timeout)
        except TimeoutError:
            timed_out = True
            _killpg(pid)
            await exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pipes.closed), _PIPE_GRACE)
    finally:
        # Runs on cancellation too: nothing of this command may outlive the request
        # (watch_exit still reaps the killed process). Killed before the join's block fd
        # closes: a sandbox that was never joined must not go on.
        _killpg(pid)
        pipes.close()
        if sync is not None:
            sync.close()
    code = exited.result() if exited.done() else -signal.SIGKILL
    exit_code = 128 - code if code < 0 else code
    stdout, cut_out = capture.text(1)
    stderr, cut_err = capture.text(2)
    notes = []
    if timed_out:
        notes.append(f"[killed: timeout after {timeout:g}s]")
    if capture.output_killed:
        notes.append(f"[killed: output exceeded {output_kill} bytes]")
    if not timed_out and exit_code in (137, 128 + 9) and oom_check and oom_check():
        notes.append("[killed: memory limit exceeded]")
    if sync is not None and sync.error:  # as the shell wrapper did: 125, nothing ran
        exit_code = 125
        notes.append(f"[not run: {sync.error}]")
    if notes:
        stderr = (stderr + "\n" if stderr else "") + "\n".join(notes)
    return CommandResult(
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        truncated=cut_out or cut_err or capture.output_killed,
        duration=time.monotonic() - started,
    )
