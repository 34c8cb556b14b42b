"""Slot containers: one long-lived sandbox per slot that every command of the slot enters.

A slot's container is started when the slot is made or reset and lives until its next
reset (or the server's end). It is a bubblewrap sandbox holding the slot's namespaces:
- user: uid/gid 0..65535 inside are `IdRange.base`.. on the host (userns.py); root in a
  slot is an unprivileged uid outside;
- pid, ipc, uts (hostname `sandbox`), and network (loopback only: two slots may both
  listen on 127.0.0.1:8080);
- its pid 1 is bubblewrap's reaper, its one child a shell waiting on a pipe from the
  server. When the pipe closes, or the server dies, or the slot's cgroups are killed,
  the pid namespace ends and every process in it dies with it.

A command enters the container: the server's wrapper joins the slot's cgroups, `nsenter`
joins its network, ipc and uts namespaces, `setpriv` drops to the slot's host uid, and
bubblewrap joins its user and pid namespaces (`--userns`, `--pidns`), builds the slot's
filesystem view in a fresh mount namespace (the same binds as the container's, so the
files are the same) and applies the hardening before it execs `/bin/sh -c COMMAND`:
Docker's default capability set (within the slot's user namespace only), no_new_privs,
the seccomp filter (seccomp.py), masked /proc entries, and an environment made of the
slot's variables alone (`--clearenv`/`--setenv`: nothing from an image or a request is
ever in the environment of a host-side process, so no LD_PRELOAD reaches the loader of
nsenter, setpriv or bwrap). Processes a command leaves in the background stay in the
container's pid namespace, so they outlive the command (a server started in one tool
call answers the next) until the slot is reset.

Every host path the sandbox shows is handed to bubblewrap as a file descriptor the server
opened (`--bind-fd`), so the unprivileged bubblewrap never needs to walk host directories
(a data dir of mode 0700, an interpreter under /root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass

from sandbox_image import seccomp
from sandbox_image.spawn import spawn, watch_exit
from sandbox_image.userns import IdRange, write_maps

log = logging.getLogger(__name__)

# Docker's default capabilities for a container's root (they apply in the slot's own user
# namespace only: none of them is a capability on the host).
DOCKER_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
               "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE",
               "SETFCAP")
# /proc entries Docker hides (files get /dev/null, directories an empty tmpfs); only those
# this kernel has can be masked.
_MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/timer_stats",
                 "/proc/sched_debug", "/proc/latency_stats", "/proc/sysrq-trigger")
_MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/proc/asound", "/proc/irq", "/proc/bus",
                "/proc/fs", "/sys/firmware")
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C"}
_READY = b"ready\n"
_START_TIMEOUT = 30.0
_BINDS = {"--bind": "--bind-fd", "--ro-bind": "--ro-bind-fd",
          "--bind-try": "--bind-fd", "--ro-bind-try": "--ro-bind-fd"}


class ContainerError(Exception):
    """A slot container could not be started (the message says why)."""


def hardening_args() -> list[str]:
    args: list[str] = []
    for path in _MASKED_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in _MASKED_DIRS:
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
    args += ["--cap-drop", "ALL"]
    for cap in DOCKER_CAPS:
        args += ["--cap-add", f"CAP_{cap}"]
    return args


def env_args(env: dict[str, str]) -> list[str]:
    out = ["--clearenv"]
    for key, value in env.items():
        out += ["--setenv", key, value]
    return out


def fd_binds(mounts: list[str], first_fd: int = 10) -> tuple[list[str], list[tuple[int, str]]]:
    """Rewrite the bind sources of bubblewrap mount args into fds: returns the new args
    and (fd, host path) for each fd to open (O_PATH) in the child."""
    out: list[str] = []
    opens: list[tuple[int, str]] = []
    i = 0
    while i < len(mounts):
        arg = mounts[i]
        if arg in _BINDS:
            src, dst = mounts[i + 1], mounts[i + 2]
            i += 3
            if arg.endswith("-try") and not os.path.lexists(src):
                continue
            fd = first_fd + len(opens)
            opens.append((fd, src))
            out += [_BINDS[arg], str(fd), dst]
            continue
        out.append(arg)
        i += 1
    return out, opens


@dataclass(frozen=True)
class Runtime:
    """What every slot container of one server shares: the id range, the seccomp filter
    file and the host tools' paths."""

    ids: IdRange
    bwrap: str
    nsenter: str
    setpriv: str
    seccomp_file: str
    network: bool

    @classmethod
    def create(cls, data_dir: str, bwrap: str, ids: IdRange, network: bool) -> Runtime:
        """Raises ContainerError when this host cannot run slot containers."""
        if os.geteuid() != 0:
            raise ContainerError("slot containers need the server to run as root (it maps "
                                 "the slots' uid ranges)")
        tools = {name: shutil.which(name, path=HOST_ENV["PATH"])
                 for name in ("nsenter", "setpriv")}
        missing = [n for n, p in tools.items() if not p]
        if missing:
            raise ContainerError(f"{', '.join(missing)} not found (util-linux)")
        if not seccomp.supported():
            raise ContainerError("no seccomp syscall table for this architecture")
        path = seccomp.write_program(os.path.join(data_dir, "seccomp.bpf"))
        return cls(ids, shutil.which(bwrap) or bwrap, tools["nsenter"], tools["setpriv"],  # type: ignore[arg-type]
                   path, network)

    def _drop(self) -> list[str]:
        return [self.setpriv, f"--reuid={self.ids.base}", f"--regid={self.ids.base}",
                "--clear-groups", "--"]


class SlotContainer:
    """One slot's container. `start` and `stop` are called by the server between
    commands; `command` builds how a command enters it.

    Guarantees: after `start` returns the container is ready for commands; after `stop`
    returns no process of it is alive. `alive` turns False as soon as its pid 1 is gone
    (a command that killed it: the server starts a fresh one on the same filesystem)."""

    def __init__(self, runtime: Runtime, mounts: list[str], wrapper: list[str]) -> None:
        self.rt = runtime
        self.mounts = mounts  # bubblewrap's mount args for the slot's view (host paths)
        self.wrapper = wrapper  # the slot's cgroup-joining prefix
        self.pid = 0  # the container's pid 1 (host pid), what commands enter
        self._outer = 0
        self._stdin = -1
        self._exited: asyncio.Future[int] | None = None

    @property
    def alive(self) -> bool:
        return self._exited is not None and not self._exited.done()

    async def start(self) -> None:
        fds: list[int] = []
        try:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            info_r, info_w = os.pipe2(os.O_CLOEXEC)
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            fds += (in_r, in_w, out_r, out_w, info_r, info_w, block_r, block_w)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        # Targets above every source fd, so no dup2 overwrites a source not yet dup'ed.
        base = max(fds) + 1
        mounts, opens = fd_binds(self.mounts, base + 3)
        argv = [*self.wrapper, *self.rt._drop(), self.rt.bwrap,
                "--unshare-user", "--userns-block-fd", str(base + 1), "--info-fd", str(base),
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                *([] if self.rt.network else ["--unshare-net"]),
                "--hostname", "sandbox", "--uid", "0", "--gid", "0",
                *mounts, *hardening_args(), "--seccomp", str(base + 2), "--die-with-parent",
                "--clearenv", "--", "/bin/sh", "-c", "echo ready; read _"]
        try:
            actions = [(os.POSIX_SPAWN_DUP2, info_w, base), (os.POSIX_SPAWN_DUP2, block_r, base + 1),
                       (os.POSIX_SPAWN_OPEN, base + 2, self.rt.seccomp_file, os.O_RDONLY, 0),
                       *[(os.POSIX_SPAWN_OPEN, fd, path, os.O_PATH, 0) for fd, path in opens]]
            self._outer = spawn(argv, env=dict(HOST_ENV), cwd=None, stdout=out_w,
                                stderr=out_w, new_session=False, preexec=None, stdin=in_r,
                                extra_actions=actions)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (in_r, out_w, info_w, block_r):
            os.close(fd)
        self._stdin = in_w
        self._exited = watch_exit(self._outer)
        try:
            try:
                info = await asyncio.wait_for(_read_until(info_r, _json_complete),
                                              _START_TIMEOUT)
                self.pid = int(json.loads(info)["child-pid"])
                write_maps(self.pid, self.rt.ids)
                os.write(block_w, b"1")
            finally:
                os.close(info_r)
                os.close(block_w)
            out = await asyncio.wait_for(_read_until(out_r, lambda b: b.endswith(_READY)
                                                     or len(b) > 4096), _START_TIMEOUT)
            if not out.endswith(_READY):
                raise ContainerError(out.decode(errors="replace").strip()[-500:])
        except (ValueError, KeyError, OSError, TimeoutError, ContainerError) as e:
            rest = b""
            with contextlib.suppress(Exception):
                rest = await asyncio.wait_for(_read_until(out_r, lambda b: False), 2.0)
            await self.stop()
            why = rest.decode(errors="replace").strip()[-500:] or str(e) or type(e).__name__
            raise ContainerError(f"the slot container did not start: {why}") from None
        except BaseException:
            await self.stop()
            raise
        finally:
            os.close(out_r)

    async def stop(self) -> None:
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1
        if self._outer:
            with contextlib.suppress(OSError):
                os.kill(self._outer, signal.SIGKILL)
        if self._exited is not None:
            await self._exited
        self._outer = 0

    def command(self, command: str, env: dict[str, str], cwd: str
                ) -> tuple[list[str], list[tuple]]:
        """(argv, posix_spawn file actions) of `command` entering this container."""
        mounts, opens = fd_binds(self.mounts)
        argv = [*self.wrapper, self.rt.nsenter, "-t", str(self.pid), "-n", "-i", "-u", "--",
                *self.rt._drop(), self.rt.bwrap,
                "--userns", "3", "--pidns", "4", "--uid", "0", "--gid", "0",
                "--unshare-cgroup-try", *mounts, *hardening_args(), "--seccomp", "5",
                "--die-with-parent", *env_args(env), "--chdir", cwd,
                "--", "/bin/sh", "-c", command]
        actions = [(os.POSIX_SPAWN_OPEN, 3, f"/proc/{self.pid}/ns/user", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 4, f"/proc/{self.pid}/ns/pid", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 5, self.rt.seccomp_file, os.O_RDONLY, 0),
                   *[(os.POSIX_SPAWN_OPEN, fd, path, os.O_PATH, 0) for fd, path in opens]]
        return argv, actions


def _json_complete(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


async def _read_until(fd: int, done: object) -> bytes:
    """Read `fd` from the event loop until `done(data)` or EOF."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = bytearray()
    finished: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data.extend(chunk)
        if (not chunk or done(bytes(data))) and not finished.done():  # type: ignore[operator]
            finished.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await finished
    finally:
        loop.remove_reader(fd)
    return bytes(data)
