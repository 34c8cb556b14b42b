"""Run one command: capped output, a timeout that kills the whole process tree.

Guarantees:
- Memory use per command is bounded by 2 x `output_cap` whatever the command prints;
  a command that prints more than `output_kill` bytes in total is killed.
- When `run_command` returns, the command's process group has been SIGKILLed if it was
  still alive (always after a timeout or a cancellation); with a fresh bubblewrap per
  command its pid namespace dies with it, so background children (`sleep 1000 &`) never
  survive the command. In a slot container (`keep_background`) a command that exits by
  itself leaves what it started in the background running, as in `docker exec`, until the
  slot is reset. The child is reaped even if the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    actions: tuple[tuple, ...] = ()  # posix_spawn file actions (a slot container's fds)
    keep_background: bool = False  # a slot container: background processes outlive it


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


def _killpg(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


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
    on_exit: Callable[[int], None] | None = None,
    oom_check: Callable[[], bool] | None = None,
    new_session: bool = False,
    extra_actions: tuple[tuple, ...] = (),
    keep_background: bool = False,
) -> CommandResult:
    """Run argv (already wrapped in the sandbox; argv[0] a path) and collect its result.

    The command gets its own process group (one killpg reaches the tree), or its own
    session if `new_session` (see spawn.detach_from_terminal)."""
    started = time.monotonic()
    capture = _Capture(output_cap, output_kill, lambda: _killpg(pid))
    fds: list[int] = []
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += (err_r, err_w)
        pid = spawn(argv, env=env, cwd=cwd, stdout=out_w, stderr=err_w,
                    new_session=new_session, preexec=preexec, extra_actions=list(extra_actions))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    exited = watch_exit(pid)
    pipes = _PipeReaders({1: out_r, 2: err_r}, capture)
    if on_start:
        on_start(pid)
    if on_exit:  # as soon as it is reaped: its pid may be another process's after that
        exited.add_done_callback(lambda _f: on_exit(pid))
    timed_out = False
    finished = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
        except TimeoutError:
            timed_out = True
            _killpg(pid)
            await exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pipes.closed), _PIPE_GRACE)
        finished = not timed_out and not capture.output_killed
    finally:
        # Runs on cancellation too: nothing of this command may outlive the request
        # (watch_exit still reaps the killed process), except the background processes a
        # command in a slot container started and left running when it ended by itself.
        if not (keep_background and finished):
            _killpg(pid)
        pipes.close()
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
