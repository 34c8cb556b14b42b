"""Starting a command process and learning when it exits, without asyncio's subprocess
transports (measured: their Popen, transport and protocol layers are ~40% of the server's
Python time per exec).

- `spawn` starts argv with stdin on /dev/null and stdout/stderr on the given pipe ends, in
  its own process group (or session). posix_spawn (vfork+exec in glibc) when neither a cwd
  nor a preexec function is needed, else subprocess.Popen.
- `watch_exit` resolves a future with the exit status, reaping the child: a pidfd in the
  event loop where the kernel has them (5.3+), else one waiter thread per child.
- `become_subreaper` / `reap_orphans`: bwrap's outer process exits before reaping the
  sandbox's pid 1, so each command leaves an orphaned zombie. It is reparented to the
  nearest subreaper or to init; as a subreaper the server reaps it at once. Without this,
  a server that is PID 1 of a container never reaps them (pids leak until the slot's
  pids limit refuses every fork), and elsewhere each zombie holds one of the slot's pids
  until init gets round to it.
- `detach_from_terminal` / `die_with_server`: process-wide safety for the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import termios
import threading
from collections.abc import Callable

# Python ignores these; an ignored signal stays ignored across exec, so reset them for the
# command (as subprocess' restore_signals does): `yes | head` must end by SIGPIPE.
_RESTORE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                         if hasattr(signal, name))


def _pidfd_works() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):  # kernel < 5.3, or filtered by seccomp
        return False
    return True


_PIDFD = _pidfd_works()
# Children started by `spawn` and not yet reaped by `watch_exit`: reap_orphans leaves them.
_OWN: set[int] = set()


def spawn(argv: list[str], *, env: dict[str, str], cwd: str | None, stdout: int, stderr: int,
          new_session: bool, preexec: Callable[[], None] | None,
          stdin: int | None = None, extra_actions: list[tuple] = ()) -> int:
    """Start argv; returns its pid. argv[0] must be a path (no PATH search). stdin is
    /dev/null unless a pipe end is given (a slot's Python session reads its requests there).
    `extra_actions`: posix_spawn file actions run after stdio is set up (fds a slot
    container's command gets: namespaces, the seccomp filter, bind sources)."""
    if extra_actions and (cwd is not None or preexec is not None):
        raise ValueError("extra file actions need the posix_spawn path (no cwd, no preexec)")
    if cwd is None and preexec is None:
        first = ((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0) if stdin is None
                 else (os.POSIX_SPAWN_DUP2, stdin, 0))
        pid = os.posix_spawn(
            argv[0], argv, env,
            file_actions=[first,
                          (os.POSIX_SPAWN_DUP2, stdout, 1),
                          (os.POSIX_SPAWN_DUP2, stderr, 2), *extra_actions],
            setpgroup=None if new_session else 0,
            setsid=new_session,
            setsigdef=_RESTORE_SIGNALS,
        )
        _OWN.add(pid)
        return pid
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=stdout,
        stderr=stderr, env=env, cwd=cwd,
        start_new_session=new_session, process_group=None if new_session else 0,
        preexec_fn=preexec)
    # watch_exit reaps it; tell Popen so it does not try again (or warn) when collected.
    proc.returncode = 0
    _OWN.add(proc.pid)
    return proc.pid


def watch_exit(pid: int) -> asyncio.Future[int]:
    """A future for the exit of child `pid` (returncode as in subprocess: -N for signal N).
    The child is reaped when it exits even if nobody awaits the future any more."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def reap(status: int | None) -> None:
        _OWN.discard(pid)
        if not done.done():
            done.set_result(-signal.SIGKILL if status is None
                            else os.waitstatus_to_exitcode(status))

    try:
        pidfd = os.pidfd_open(pid) if _PIDFD else -1
    except OSError:  # out of fds: the thread below still reaps the child
        pidfd = -1
    if pidfd >= 0:

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                _, status = os.waitpid(pid, 0)  # exited: does not block
            except ChildProcessError:
                status = None
            reap(status)

        loop.add_reader(pidfd, readable)
        return done

    def wait_in_thread() -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = None
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(reap, status)

    threading.Thread(target=wait_in_thread, name=f"waitpid-{pid}", daemon=True).start()
    return done


# Kernels without CONFIG_PROC_CHILDREN lack this file; then /proc is scanned instead.
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _child_pids() -> list[int]:
    if not _CHILDREN_FILES:
        return _child_pids_by_scan()
    pids: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tids:
        try:  # os calls, not open(): this runs after every command
            fd = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY)
        except OSError:  # the thread ended meanwhile
            continue
        try:
            pids += map(int, os.read(fd, 65536).split())
        except OSError:
            pass
        finally:
            os.close(fd)
    return pids


def _child_pids_by_scan() -> list[int]:
    me, pids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                pids.append(int(entry))
    return pids


def become_subreaper() -> bool:
    """Orphans of this process's descendants are reparented to it (see `reap_orphans`)."""
    return _libc is not None and _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap_orphans() -> None:
    """Reap every exited child that `spawn` did not start (run on SIGCHLD)."""
    for pid in _child_pids():
        if pid not in _OWN:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def die_with_server() -> None:
    """preexec: SIGKILL this child if the server dies (even by SIGKILL), so a command
    never outlives the server that started it."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
