"""Slot containers: one long-lived sandbox per slot that every command of the slot enters.

A slot's container is started when the slot is made or reset and lives until its next
reset (or the server's end). It is a bubblewrap sandbox holding the slot's namespaces:
- user: uid/gid 0..65535 inside are `IdRange.base`.. on the host (userns.py); root in a
  slot is an unprivileged uid outside;
- pid, ipc, uts (hostname `sandbox`), and network (loopback only: two slots may both
  listen on 127.0.0.1:8080; with network on, slirp4netns gives it its own tap device with
  NAT to the outside, and no way to the host's loopback);
- its pid 1 is bubblewrap's reaper, its one child a shell waiting on a pipe from the
  server. When the pipe closes, or the server dies, or the slot's cgroups are killed,
  the pid namespace ends and every process in it dies with it.

A command enters the container. The fast way is the slot-enter helper (slot_enter.c, built
once per host with the system's C compiler): it joins the slot's cgroups, joins all the
container's namespaces at once through a pidfd of its pid 1 (a pid number could name
another process by then; a pidfd cannot), becomes root of the slot's user namespace, forks
into its pid namespace, keeps Docker's default capability set (within the slot's user
namespace only), sets no_new_privs, loads the seccomp filter (seccomp.py) and execs
`/bin/sh -c COMMAND` with an environment made of the slot's variables alone. Without a
compiler (or on a kernel before 5.8) the server's wrapper joins the cgroups, `nsenter` joins
the network, ipc and uts namespaces and drops to the slot's host uid, and bubblewrap joins
the user and pid namespaces (`--userns`, `--pidns`) and rebuilds the slot's view in a fresh
mount namespace with the same hardening (`--clearenv`/`--setenv`, masked /proc). Either
way nothing from an image or a request is ever in the environment of a host-side process,
so no LD_PRELOAD reaches a host process's loader. Processes a command leaves in the
background stay in the container's pid namespace, so they outlive the command (a server
started in one tool call answers the next) until the slot is reset.

bubblewrap runs as the slot's unprivileged host uid, so a host path it binds must be one
that uid can reach: others (a data dir of mode 0700, an interpreter under /root) are bound
by the server into a world-traversable stage directory first (`Stage`, in the server's
private mount namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from sandbox_image import mounts, seccomp
from sandbox_image.isolation import HOST_ENV, _proc_masks, env_args
from sandbox_image.spawn import spawn, watch_exit
from sandbox_image.userns import IdRange, MappingNamespace, idmapped_clone, write_maps

log = logging.getLogger(__name__)

# Docker's default capabilities for a container's root (they apply in the slot's own user
# namespace only: none of them is a capability on the host).
DOCKER_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
               "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE",
               "SETFCAP")
_READY = b"ready\n"
_START_TIMEOUT = 30.0
_BINDS = ("--bind", "--ro-bind", "--bind-try", "--ro-bind-try")


class ContainerError(Exception):
    """A slot container could not be started (the message says why)."""


def hardening_args() -> list[str]:
    # /proc/sys needs no mask here: its files belong to the host's uid 0, which is not
    # mapped in a slot's user namespace, so root in a slot cannot write them.
    args = [*_proc_masks(), "--cap-drop", "ALL"]
    for cap in DOCKER_CAPS:
        args += ["--cap-add", f"CAP_{cap}"]
    return args


def _traversable(path: str) -> bool:
    """Whether any uid can reach `path` (every directory on the way has o+x)."""
    cur = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if not os.stat(cur).st_mode & 0o001:
                return False
        except OSError:
            return False
        if cur == "/":
            return True
        cur = os.path.dirname(cur)


def _readable_by_others(path: str) -> bool:
    """Whether any uid may list and enter the directory `path` itself."""
    try:
        return os.stat(path).st_mode & 0o005 == 0o005
    except OSError:
        return False


class Stage:
    """Bind sources an unprivileged bubblewrap can reach, shared by all the slot containers
    of one server. bwrap (running as the slot's host uid) resolves every bind source by
    path, so a source under a directory of mode 0700 (a data dir from mkdtemp, an
    interpreter under /root) is made reachable here, in the server's private mount
    namespace, under `root` (mode 0711: only the trees hung off it can be entered):
    - the server's data dir (every slot's workspace, scratch, disks, root overlays): one
      alias, `<root>/data`, bound once at the server's start and kept a peer of the data dir
      (shared propagation), so a disk or overlay the server mounts there later shows in the
      alias too. No per-container mount: a container's start costs no mount and no unmount
      (and the server's namespace, which bubblewrap copies at every start, stays small);
    - any other source: bound once under `<root>/<n>`, re-bound if the path now names
      another directory (same path, new inode).
    `close` unmounts all of it."""

    def __init__(self, root: str, data_dir: str | None = None,
                 idmap: Callable[[str, str], None] | None = None) -> None:
        """`idmap(source, target)`: mount `source` read-only on `target` with its owners
        shifted into the slots' uid range (a read-only source the slot's root could not
        read as it is: a virtualenv made by mkdtemp, mode 0700, owned by the host's root)."""
        self.root = root
        self._idmap = idmap
        self._made: list[str] = []
        self._staged: dict[tuple[str, bool], tuple[str, tuple[int, int]]] = {}
        self._ids = itertools.count()
        self._data: tuple[str, str] | None = None  # (data dir, its alias)
        if data_dir is not None:
            self._alias(os.path.realpath(data_dir))

    def _alias(self, data_dir: str) -> None:
        if _traversable(os.path.join(data_dir, "_")):
            return  # reachable as it is
        if not os.stat(data_dir).st_mode & 0o001 or mounts.mounts_under(data_dir):
            # An alias of a dir the slots' uid cannot enter would not help; one made over
            # existing mounts would hold stale copies of them: bind sources one by one.
            return
        alias = os.path.join(self.root, "data")
        try:
            os.makedirs(alias, exist_ok=True)
            mounts.mount(data_dir, data_dir, "", mounts.MS_BIND)
            self._made.append(data_dir)
            mounts.mount("", data_dir, "", mounts.MS_SHARED)
            mounts.mount(data_dir, alias, "", mounts.MS_BIND)
            self._made.append(alias)
        except OSError as e:
            log.warning("no alias of the data dir for slot containers (%s): their sources "
                        "are staged one by one", e)
            for target in reversed(self._made):
                with contextlib.suppress(OSError):
                    mounts.unmount(target)
            self._made.clear()
            return
        self._data = (data_dir, alias)

    def rewrite(self, mount_args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(mount_args):
            arg = mount_args[i]
            if arg in _BINDS:
                src, dst = mount_args[i + 1], mount_args[i + 2]
                i += 3
                if not os.path.lexists(src):
                    if arg.endswith("-try"):
                        continue
                elif self._data is not None and (src == self._data[0]
                                                 or src.startswith(self._data[0] + "/")):
                    src = self._data[1] + src[len(self._data[0]):]
                elif arg.startswith("--ro-bind") and self._idmap is not None \
                        and os.path.isdir(src) and not _readable_by_others(src):
                    src = self._stage(src, idmapped=True)
                elif not _traversable(src):
                    src = self._stage(src)
                out += [arg, src, dst]
                continue
            out.append(arg)
            i += 1
        return out

    def _stage(self, src: str, idmapped: bool = False) -> str:
        st = os.stat(src)
        known = self._staged.get((src, idmapped))
        if known is not None and known[1] == (st.st_dev, st.st_ino):
            return known[0]
        target = os.path.join(self.root, str(next(self._ids)))
        if idmapped:
            assert self._idmap is not None
            os.makedirs(target, exist_ok=True)
            self._idmap(src, target)
        else:
            if os.path.isdir(src):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(self.root, exist_ok=True)
                with open(target, "a"):
                    pass
            mounts.mount(src, target, "", mounts.MS_BIND | mounts.MS_REC)
        self._made.append(target)
        self._staged[(src, idmapped)] = (target, (st.st_dev, st.st_ino))
        return target

    def close(self) -> None:
        for target in reversed(self._made):
            with contextlib.suppress(OSError):
                mounts.unmount(target)
        self._made.clear()
        self._staged.clear()
        self._data = None
        left = mounts.mounts_under(self.root)
        if left:  # never delete through a mount: it would delete its source's files
            log.warning("stage %s: %d mounts did not come off; left in place", self.root,
                        len(left))
            return
        shutil.rmtree(self.root, ignore_errors=True)


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
    stage_dir: str  # world-traversable (0711); each container stages its sources under it
    slirp: str | None = None  # slirp4netns, the egress of each slot when network is on
    enter: str | None = None  # the slot-enter helper (slot_enter.c), when it could be built

    @classmethod
    def create(cls, data_dir: str, bwrap: str, ids: IdRange, network: bool,
               enter_helper: bool = True) -> Runtime:
        """Raises ContainerError when this host cannot run slot containers."""
        if os.geteuid() != 0:
            raise ContainerError("slot containers need the server to run as root (it maps "
                                 "the slots' uid ranges)")
        if not mounts.in_private_namespace():
            # What a container stages is mounted by the server: on the host's namespace it
            # would be left behind by a server that was killed.
            raise ContainerError("slot containers need the server's private mount namespace")
        tools = {name: shutil.which(name, path=HOST_ENV["PATH"])
                 for name in ("nsenter", "setpriv")}
        missing = [n for n, p in tools.items() if not p]
        if missing:
            raise ContainerError(f"{', '.join(missing)} not found (util-linux)")
        if not seccomp.supported():
            raise ContainerError("no seccomp syscall table for this architecture")
        slirp = shutil.which("slirp4netns", path=HOST_ENV["PATH"])
        if network and not slirp:
            raise ContainerError("network=on needs slirp4netns for each slot's own network "
                                 "(apt-get install slirp4netns)")
        stage = tempfile.mkdtemp(prefix="slot-stage-", dir="/tmp")
        os.chmod(stage, 0o711)
        path = seccomp.write_program(os.path.join(stage, "seccomp.bpf"))
        return cls(ids, shutil.which(bwrap) or bwrap, tools["nsenter"], tools["setpriv"],  # type: ignore[arg-type]
                   path, network, stage, slirp, build_enter() if enter_helper else None)

    def close(self) -> None:
        shutil.rmtree(self.stage_dir, ignore_errors=True)

    def _drop(self) -> list[str]:
        return [self.setpriv, f"--reuid={self.ids.base}", f"--regid={self.ids.base}",
                "--clear-groups", "--"]


class SlotContainer:
    """One slot's container. `start` and `stop` are called by the server between
    commands; `command` builds how a command enters it.

    Guarantees: after `start` returns the container is ready for commands; after `stop`
    returns no process of it is alive. `alive` turns False as soon as its pid 1 is gone
    (a command that killed it: the server starts a fresh one on the same filesystem)."""

    def __init__(self, runtime: Runtime, mounts: list[str], wrapper: list[str],
                 joins: list[str] | None, stage: Stage) -> None:
        """`wrapper`: the argv prefix that joins the slot's cgroups (and sets rlimits);
        `joins`: the same as files to write "0" to, when that is all it does (the fast
        entering helper takes those; None: commands go through `wrapper`); `stage`: the
        server's Stage, which makes the mount sources reachable."""
        self.rt = runtime
        self._mount_args = mounts  # bubblewrap's mount args for the slot's view (host paths)
        self.mounts: list[str] = []  # the same, with sources staged
        self._stage = stage
        self.wrapper = wrapper  # the slot's cgroup-joining prefix
        self.joins = joins
        self._pidfd = -1  # of the container's pid 1: what the entering helper joins
        self.pid = 0  # the container's pid 1 (host pid), what commands enter
        self._outer = 0
        self._stdin = -1
        self._exited: asyncio.Future[int] | None = None
        self._egress: tuple[int, int, asyncio.Future[int]] | None = None

    @property
    def alive(self) -> bool:
        return self._exited is not None and not self._exited.done()

    async def start(self) -> None:
        if not self.mounts:
            try:  # usually no mount at all: paths under the data dir's alias
                self.mounts = self._stage.rewrite(self._mount_args)
            except OSError as e:
                raise ContainerError(f"cannot stage the slot's mounts: {e}") from None
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
        mounts = self.mounts
        argv = [*self.wrapper, *self.rt._drop(), self.rt.bwrap,
                "--unshare-user", "--userns-block-fd", str(base + 1), "--info-fd", str(base),
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--unshare-net",
                "--hostname", "sandbox", "--uid", "0", "--gid", "0",
                *mounts, *hardening_args(), "--seccomp", str(base + 2), "--die-with-parent",
                "--clearenv", "--", "/bin/sh", "-c", "echo ready; read _"]
        try:
            actions = [(os.POSIX_SPAWN_DUP2, info_w, base), (os.POSIX_SPAWN_DUP2, block_r, base + 1),
                       (os.POSIX_SPAWN_OPEN, base + 2, self.rt.seccomp_file, os.O_RDONLY, 0)]
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
            if self.rt.network:
                await self._start_egress()
            if self._pidfd >= 0:
                os.close(self._pidfd)
            self._pidfd = os.pidfd_open(self.pid)
            if self.rt.enter is not None and self.rt.enter not in _ENTER_WORKS:
                _ENTER_WORKS[self.rt.enter] = await self._probe_enter()
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

    async def _probe_enter(self) -> bool:
        """Whether the slot-enter helper works on this kernel (setns through a pidfd needs
        5.8): `true` through it, once per server."""
        argv, actions = self._enter_argv("true", {}, "/")
        with open(os.devnull, "wb") as null:
            pid = spawn(argv, env=dict(HOST_ENV), cwd=None, stdout=null.fileno(),
                        stderr=null.fileno(), new_session=False, preexec=None,
                        extra_actions=actions)
        code = await watch_exit(pid)
        if code != 0:
            log.warning("slot-enter does not work here (exit %d): slot commands enter "
                        "through nsenter and bwrap", code)
        return code == 0

    async def _start_egress(self) -> None:
        """User-mode networking for this container (slirp4netns, as the slot's host uid, in
        its user namespace): a tap device with NAT to the outside, never to the host's
        loopback, where the slot server and the host's local services listen."""
        assert self.rt.slirp is not None
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
        base = max(ready_r, ready_w, exit_r, exit_w) + 1
        argv = [*self.rt._drop(), self.rt.slirp, "--configure", "--mtu=65520",
                "--disable-host-loopback", f"--ready-fd={base}", f"--exit-fd={base + 1}",
                f"--userns-path=/proc/{self.pid}/ns/user", "--netns-type=path",
                f"/proc/{self.pid}/ns/net", "tap0"]
        try:
            with open(os.devnull, "wb") as null:
                pid = spawn(argv, env=dict(HOST_ENV), cwd=None, stdout=null.fileno(),
                            stderr=null.fileno(), new_session=False, preexec=None,
                            extra_actions=[(os.POSIX_SPAWN_DUP2, ready_w, base),
                                           (os.POSIX_SPAWN_DUP2, exit_r, base + 1)])
        except BaseException:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        self._egress = (pid, exit_w, watch_exit(pid))
        try:
            got = await asyncio.wait_for(_read_until(ready_r, lambda b: len(b) > 0),
                                         _START_TIMEOUT)
        finally:
            os.close(ready_r)
        if not got:
            raise ContainerError("slirp4netns (the slot's network) did not start")

    async def _stop_egress(self) -> None:
        if self._egress is None:
            return
        pid, exit_w, exited = self._egress
        self._egress = None
        os.close(exit_w)  # slirp4netns exits when this closes
        if not exited.done():  # (a reaped pid may be another process's by now)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        await exited

    async def stop(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        await self._stop_egress()
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1
        # Only a process not yet reaped may be signalled: a reaped one's pid may be another
        # process's by now.
        if self._outer and self._exited is not None and not self._exited.done():
            with contextlib.suppress(OSError):
                os.kill(self._outer, signal.SIGKILL)
        if self._exited is not None:
            await self._exited
        self._outer = 0

    async def close(self) -> None:
        """Stop it for good (what it staged belongs to the server's Stage)."""
        await self.stop()

    def command(self, command: str, env: dict[str, str], cwd: str
                ) -> tuple[list[str], list[tuple]]:
        """(argv, posix_spawn file actions) of `command` entering this container."""
        if _ENTER_WORKS.get(self.rt.enter or "") and self.joins is not None \
                and self._pidfd >= 0:
            return self._enter_argv(command, env, cwd)
        # nsenter joins the container's network, ipc and uts namespaces and drops to the
        # slot's host uid (-S/-G; supplementary groups cleared) in one exec.
        base = str(self.rt.ids.base)
        argv = [*self.wrapper, self.rt.nsenter, "-t", str(self.pid), "-n", "-i", "-u",
                "-S", base, "-G", base, "--", self.rt.bwrap,
                "--userns", "3", "--pidns", "4", "--uid", "0", "--gid", "0",
                "--unshare-cgroup-try", *self.mounts, *hardening_args(), "--seccomp", "5",
                "--die-with-parent", *env_args(env), "--chdir", cwd,
                "--", "/bin/sh", "-c", command]
        actions = [(os.POSIX_SPAWN_OPEN, 3, f"/proc/{self.pid}/ns/user", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 4, f"/proc/{self.pid}/ns/pid", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 5, self.rt.seccomp_file, os.O_RDONLY, 0)]
        return argv, actions

    def grading_command(self, command: str, env: dict[str, str], cwd: str,
                        toolchain: list[str]) -> tuple[list[str], list[tuple]]:
        """(argv, posix_spawn file actions) of a grading command: in the slot's user,
        network, ipc and uts namespaces (its files, its servers on 127.0.0.1), but in a
        fresh pid namespace that is no child of the slot's (the agent's processes cannot
        see, signal or trace it) and a fresh mount namespace where `toolchain` (bubblewrap
        binds: the image's pristine system trees and interpreters, grading_view.py) lies
        over the slot's root. The same hardening as every slot command."""
        base = str(self.rt.ids.base)
        mounts = self._stage.rewrite([*self._mount_args, *toolchain])
        argv = [*self.wrapper, self.rt.nsenter, "-t", str(self.pid), "-n", "-i", "-u",
                "-S", base, "-G", base, "--", self.rt.bwrap,
                "--userns", "3", "--unshare-pid", "--uid", "0", "--gid", "0",
                "--unshare-cgroup-try", *mounts, *hardening_args(), "--seccomp", "4",
                "--die-with-parent", *env_args(env), "--chdir", cwd,
                "--", "/bin/sh", "-c", command]
        actions = [(os.POSIX_SPAWN_OPEN, 3, f"/proc/{self.pid}/ns/user", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 4, self.rt.seccomp_file, os.O_RDONLY, 0)]
        return argv, actions

    def _enter_argv(self, command: str, env: dict[str, str], cwd: str
                    ) -> tuple[list[str], list[tuple]]:
        """The fast way in: the slot-enter helper joins the container's namespaces through
        a pidfd of its pid 1 (slot_enter.c)."""
        assert self.rt.enter is not None
        argv = [self.rt.enter, "3", "4", cwd]
        for path in self.joins or ():
            argv += ["-j", path]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        argv += ["--", "/bin/sh", "-c", command]
        return argv, [(os.POSIX_SPAWN_DUP2, self._pidfd, 3),
                      (os.POSIX_SPAWN_OPEN, 4, self.rt.seccomp_file, os.O_RDONLY, 0)]


# slot-enter helper path -> whether it works on this kernel (probed once per server).
_ENTER_WORKS: dict[str, bool] = {}


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


_ENTER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slot_enter.c")


def build_enter() -> str | None:
    """The slot-enter helper, compiled once per source version into a shared cache (a C
    compiler is needed once per host); None when it cannot be built: commands then enter
    through nsenter and bwrap (about twice the cost)."""
    cc = shutil.which("cc", path=HOST_ENV["PATH"]) or shutil.which("gcc", path=HOST_ENV["PATH"])
    try:
        with open(_ENTER_SOURCE, "rb") as f:
            source = f.read()
    except OSError:
        return None
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = os.path.join("/var/tmp", "rollout-slot-enter")
    target = os.path.join(cache, f"slot-enter-{digest}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(cache, 0o755)
    # It runs as root: only a helper in a directory and file that only we could have
    # written (ours, not writable by group or others, no symlink) is used.
    if not _only_ours(cache):
        log.warning("%s is not a directory only this user can write: slot-enter not used",
                    cache)
        return None
    if os.path.lexists(target):
        return target if _only_ours(target) else None
    if cc is None:
        log.info("no C compiler: slot commands enter through nsenter and bwrap")
        return None
    try:
        tmp = f"{target}.{os.getpid()}.tmp"
        proc = subprocess.run([cc, "-O2", "-o", tmp, _ENTER_SOURCE], capture_output=True,
                              timeout=120, env=dict(HOST_ENV))
        if proc.returncode != 0:
            log.warning("building slot-enter failed (%s): slot commands enter through "
                        "nsenter and bwrap", proc.stderr.decode(errors="replace")[-300:])
            return None
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("building slot-enter failed (%s): slot commands enter through nsenter "
                    "and bwrap", e)
        return None
    return target


def _only_ours(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (not stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o022)


class IdmappedRoots:
    """Each image's root filesystem, mounted once per server through an idmapped mount
    (its files, owned by 0 on disk, belong to the containers' root), the lower layer of
    its slots' root overlays. `close` unmounts them and ends the mapping namespace."""

    def __init__(self, data_dir: str, ids: IdRange) -> None:
        self._dir = os.path.join(data_dir, "lowers")
        self._ids = ids
        self._ns: MappingNamespace | None = None
        self._mounted: dict[str, str] = {}

    async def get(self, digest: str, rootfs: str) -> str:
        path = self._mounted.get(digest)
        if path is None:
            path = os.path.join(self._dir, digest.replace(":", "-")[:24])
            await asyncio.to_thread(self._mount, rootfs, path)
            self._mounted[digest] = path
        return path

    def _mount(self, rootfs: str, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.clone(rootfs, path)

    def clone(self, source: str, target: str) -> None:
        """An idmapped, read-only clone of `source` on the existing directory `target` (it
        goes with the caller's own mount namespace or unmount)."""
        if self._ns is None:
            self._ns = MappingNamespace(self._ids)
        idmapped_clone(source, target, self._ns.fd)

    def close(self) -> None:
        for path in self._mounted.values():
            with contextlib.suppress(OSError):
                mounts.unmount(path)
        self._mounted.clear()
        if self._ns is not None:
            self._ns.close()
            self._ns = None
