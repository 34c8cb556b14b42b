"""Run one command: capped output, a timeout that kills the whole process tree.

Guarantees:
- Memory use per command is bounded by 2 x `output_cap` whatever the command prints;
  a command that prints more than `output_kill` bytes in total is killed.
- When `run_command` returns, the command's process group has been SIGKILLed if it was
  still alive; under bubblewrap the command's pid namespace dies with it, so background
  children (`sleep 1000 &`) never survive the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

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


class _Capture(asyncio.SubprocessProtocol):
    def __init__(self, cap: int, kill_at: int, on_excess: Callable[[], None]) -> None:
        self.cap = cap
        self.kill_at = kill_at
        self.on_excess = on_excess
        self.buffers = {1: bytearray(), 2: bytearray()}
        self.totals = {1: 0, 2: 0}
        self.output_killed = False
        loop = asyncio.get_running_loop()
        self.exited = loop.create_future()
        self.pipes_closed = loop.create_future()
        self._open_pipes = 2

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self.buffers[fd]
        room = self.cap - len(buf)
        if room > 0:
            buf += data[:room]
        self.totals[fd] += len(data)
        if not self.output_killed and self.totals[1] + self.totals[2] > self.kill_at:
            self.output_killed = True
            self.on_excess()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes -= 1
        if self._open_pipes <= 0 and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self, fd: int) -> tuple[str, bool]:
        data = bytes(self.buffers[fd])
        text = data.decode("utf-8", errors="replace")
        total = self.totals[fd]
        if total > len(data):
            text += f"\n[output truncated: showing {len(data)} of {total} bytes]"
            return text, True
        return text, False


_PR_SET_PDEATHSIG = 1
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def die_with_server() -> None:
    """preexec: SIGKILL this child if the server dies (even by SIGKILL), so an outer
    bwrap process never outlives the server that started it."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def use_pidfd_child_watcher() -> bool:
    """Python 3.11 waits for each child in a new thread (ThreadedChildWatcher): a thread
    start and GIL hand-offs per command, ~0.3 ms under load. A pidfd in the event loop
    needs neither; 3.12+ already does this by default. Call from the running loop."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel < 5.3 or pidfd_open filtered by seccomp
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    return True


def detach_from_terminal() -> bool:
    """Give up this process's controlling terminal, if any, so that no command can open
    /dev/tty (to write to a user's terminal or inject input with TIOCSTI).

    Returns True when that is done or there was none: commands then only need their own
    process group. Returns False for a session leader that owns a terminal (giving it up
    would hang up the session): each command must then start its own session instead,
    which costs ~5-10 ms per command on kernels that create a scheduler autogroup per
    session.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return True  # no controlling terminal
    try:
        if os.getsid(0) == os.getpid():
            return False
        fcntl.ioctl(fd, termios.TIOCNOTTY)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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
    oom_check: Callable[[], bool] | None = None,
    new_session: bool = False,
) -> CommandResult:
    """Run argv (already wrapped in the sandbox) and collect its result.

    The command gets its own process group (one killpg reaches the tree), or its own
    session if `new_session` (see `detach_from_terminal`)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    pid_box: list[int] = []

    def kill() -> None:
        if pid_box:
            _killpg(pid_box[0])

    transport, proto = await loop.subprocess_exec(
        lambda: _Capture(output_cap, output_kill, kill),
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=new_session,
        process_group=None if new_session else 0,
        preexec_fn=preexec,
    )
    pid = transport.get_pid()
    pid_box.append(pid)
    if on_start:
        on_start(pid)
    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(proto.exited), timeout)
        except TimeoutError:
            timed_out = True
            kill()
            await proto.exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proto.pipes_closed), _PIPE_GRACE)
    finally:
        # Runs on cancellation too: nothing of this command may outlive the request.
        kill()
        transport.close()
    code = transport.get_returncode()
    if code is None:
        code = -signal.SIGKILL
    exit_code = 128 - code if code < 0 else code
    stdout, cut_out = proto.text(1)
    stderr, cut_err = proto.text(2)
    notes = []
    if timed_out:
        notes.append(f"[killed: timeout after {timeout:g}s]")
    if proto.output_killed:
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
        truncated=cut_out or cut_err or proto.output_killed,
        duration=time.monotonic() - started,
    )
