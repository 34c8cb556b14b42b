"""Per-slot memory and pids limits.

One cgroup per slot (v2 if its memory/pids controllers are usable, else v1 memory + pids
hierarchies, whichever is writable), created under the server's own cgroup. Every command
of a slot joins its slot's cgroup before exec, so a fork bomb or memory hog exhausts only
its own slot. Without writable cgroups, rlimits are the fallback (weaker: RLIMIT_AS caps
each process, not the slot; RLIMIT_NPROC is only set for a non-root server because it
counts every process of the uid).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shlex
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "slot-server-"


def _own_cgroup_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> int:
    """The inode of this process's pid namespace (0 if unknown)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _instance_id(pid: int) -> str:
    """`<pid>-<start time>-<pid namespace>`: a pid and its start time as this /proc shows
    them, and the namespace they mean something in."""
    return f"{pid}-{_start_time(pid) or 0}-{_pid_namespace()}"


def _own_id() -> str:
    """This process's id as /proc shows it (through /proc/self: right even in a pid
    namespace of its own over the host's /proc, where getpid() would name another process)."""
    try:
        with open("/proc/self/stat") as f:
            pid = f.read().split(" ", 1)[0]
    except OSError:
        pid = str(os.getpid())
    return _instance_id(int(pid))


def _owner_alive(instance: str) -> bool:
    """Is the server that made `slot-server-<instance>` still running? Only servers of our
    own pid namespace can be judged (a server in another one, e.g. in a container sharing
    this cgroup tree, counts as alive); unknown names count as alive, and the pid-only names
    of older servers only while that pid exists."""
    parts = instance.split("-")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return True  # not ours to judge
    if len(parts) == 1:
        return _pid_alive(int(parts[0]))
    if len(parts) == 3 and int(parts[2]) != _pid_namespace():
        return True
    return _start_time(int(parts[0])) == parts[1]


def _kill_procs(group: Path) -> None:
    kill_file = group / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
            return
    for _ in range(5):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _remove_tree(group: Path) -> None:
    """rmdir a cgroup and its children (a cgroup dir can only be removed bottom-up). Another
    server may be removing the same stale tree at the same moment: what vanishes meanwhile
    is simply gone, never an error."""
    try:
        children = [p for p in group.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return
    for child in children:
        _remove_tree(child)
    _kill_procs(group)
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # Killed processes may take a moment to leave the cgroup.
            time.sleep(0.01)


class SlotCgroups:
    """Creates and applies the per-slot limits. Methods are called from the event loop
    thread; `preexec(slot)` runs in the forked child just before exec."""

    def __init__(self, slots: int, memory_mb: int | None, pids: int | None) -> None:
        self.memory_bytes = memory_mb * (1 << 20) if memory_mb else None
        self.pids = pids
        self.mode = "none"
        self._groups: list[list[Path]] = [[] for _ in range(slots)]  # slot -> cgroup dirs
        self._memory_groups: list[Path | None] = [None] * slots
        self._server_dirs: list[Path] = []
        self._wrappers: dict[int, list[str]] = {}
        # No core dumps from commands (a crashing test suite could fill the disk). Set once
        # on the server, whose children all inherit it, rather than per command.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.memory_bytes is None and self.pids is None:
            return
        try:
            self._setup_v2(slots) or self._setup_v1(slots)
        except OSError as e:
            log.warning("cgroup setup failed (%s); falling back to rlimits", e)
            self.cleanup()
            # No command may try to join the groups just removed (every one would fail
            # with exit 125 before it ran).
            self._groups = [[] for _ in range(slots)]
            self._memory_groups = [None] * slots
            self.mode = "none"
        if self.mode == "none":
            self.mode = "rlimit"
            log.warning("no writable cgroups: per-command rlimits only (weaker limits)")

    # --- setup ----------------------------------------------------------------------------

    def _make_server_dir(self, base: Path) -> Path:
        # Named by pid AND start time AND pid namespace: pids are reused quickly on a busy
        # host, and a server that took over a dead server's pid must never share (or see
        # removed) its groups; a server in another pid namespace (a container, a sandbox
        # that is pid 1 of its own) must never judge ours by pids that mean other processes.
        for stale in base.glob(_PREFIX + "*"):
            if not _owner_alive(stale.name[len(_PREFIX):]):
                try:
                    _remove_tree(stale)
                except OSError as e:  # someone else's leftovers never fail our setup
                    log.warning("could not remove stale cgroup %s: %s", stale, e)
        d = base / f"{_PREFIX}{_own_id()}"
        d.mkdir(exist_ok=True)
        self._server_dirs.append(d)
        return d

    def _setup_v2(self, slots: int) -> bool:
        own = _own_cgroup_paths().get("")
        if own is None or not (CGROUP_ROOT / "cgroup.controllers").exists():
            return False
        available = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        if not {"memory", "pids"} <= set(available):
            return False
        base = CGROUP_ROOT / own.lstrip("/")
        server = self._make_server_dir(base)
        (server / "cgroup.subtree_control").write_text("+memory +pids")
        for i in range(slots):
            g = server / f"slot-{i}"
            g.mkdir(exist_ok=True)
            if self.memory_bytes:
                (g / "memory.max").write_text(str(self.memory_bytes))
                with contextlib.suppress(OSError):
                    (g / "memory.swap.max").write_text("0")
                self._memory_groups[i] = g
            if self.pids:
                (g / "pids.max").write_text(str(self.pids))
            self._groups[i] = [g]
        self.mode = "cgroup2"
        return True

    def _setup_v1(self, slots: int) -> bool:
        own = _own_cgroup_paths()
        wanted = {"memory": self.memory_bytes, "pids": self.pids}
        for controller, limit in wanted.items():
            if limit is None or controller not in own:
                continue
            root = CGROUP_ROOT / controller
            if not (root / "cgroup.procs").exists():
                continue
            server = self._make_server_dir(root / own[controller].lstrip("/"))
            for i in range(slots):
                g = server / f"slot-{i}"
                g.mkdir(exist_ok=True)
                if controller == "memory":
                    (g / "memory.limit_in_bytes").write_text(str(limit))
                    with contextlib.suppress(OSError):
                        (g / "memory.memsw.limit_in_bytes").write_text(str(limit))
                    self._memory_groups[i] = g
                else:
                    (g / "pids.max").write_text(str(limit))
                self._groups[i].append(g)
            self.mode = "cgroup1"
        return self.mode == "cgroup1"

    # --- per command ----------------------------------------------------------------------

    def wrapper(self, slot: int) -> list[str]:
        """argv prefix that joins the slot's cgroups and sets rlimits, then execs the rest
        of the argv; [] when there is nothing to do per command.

        A shell prefix instead of a Python preexec_fn: preexec forces fork() plus Python's
        after-fork work in the child (~5-7 ms under load); one exec of sh costs ~0.25 ms.
        """
        steps = [f"echo {who} > {shlex.quote(str(path))} || exit 125"
                 for path, who in self._join_files(slot, "$$")]
        if self.mode == "rlimit" and self.memory_bytes:
            steps.append(f"ulimit -v {self.memory_bytes // 1024}")
        if self.mode == "rlimit" and self.pids and os.geteuid() != 0:
            steps.append(f"ulimit -u {self.pids} 2>/dev/null")
        if not steps:
            return []
        steps.append('exec "$@"')
        return ["/bin/sh", "-c", "; ".join(steps), "slot-wrap"]

    def wrapper_for(self, slot: int) -> list[str]:
        """`wrapper(slot)`, built once per slot (it never changes)."""
        cached = self._wrappers.get(slot)
        if cached is None:
            cached = self._wrappers[slot] = self.wrapper(slot)
        return cached

    def self_join_files(self, slot: int) -> list[str] | None:
        """The files a process writes "0" to, to move itself into slot's cgroups (what a
        slot container's entering helper does instead of the wrapper shell); None when a
        command needs more than that (rlimits)."""
        if self.mode == "rlimit" and (self.memory_bytes or self.pids):
            return None
        name = "tasks" if self.mode == "cgroup1" else "cgroup.procs"
        return [str(g / name) for g in self._groups[slot]]

    def _join_files(self, slot: int, pid: str) -> list[tuple[Path, str]]:
        """(file, what to write) that moves the calling single-threaded process into the
        slot's cgroups.

        v1: "0" to `tasks` moves only the calling thread, which lets the kernel skip the
        global threadgroup lock that a write to `cgroup.procs` takes (its write side waits
        for an RCU grace period: 1-20 ms under load, against ~0.05 ms). For a
        single-threaded process the result is the same. Only a self-move ("0") skips it:
        any pid written by another process, even to `tasks`, takes the lock, which is why
        a command joins through its own wrapper and not from the server (measured on this
        kernel: a server-side join made an exec of `true` 2-7 ms dearer at p50, and
        blocked the server's event loop while it waited). v2 has no per-thread file outside
        threaded subtrees, so it writes the pid to `cgroup.procs`.
        """
        if self.mode == "cgroup1":
            return [(g / "tasks", "0") for g in self._groups[slot]]
        return [(g / "cgroup.procs", pid) for g in self._groups[slot]]

    def preexec(self, slot: int) -> None:
        """Runs in the child between fork and exec: join the slot's cgroups, set rlimits."""
        for path, who in self._join_files(slot, str(os.getpid())):
            fd = os.open(str(path), os.O_WRONLY)
            try:
                os.write(fd, who.encode())
            finally:
                os.close(fd)
        if self.mode == "rlimit":
            if self.memory_bytes:
                resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))
            if self.pids and os.geteuid() != 0:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.pids, self.pids))

    def oom_kills(self, slot: int) -> int:
        """How many processes of this slot the kernel OOM-killed so far (0 if unknown).
        Read for every command, so plain os calls rather than pathlib."""
        g = self._memory_groups[slot]
        if g is None:
            return 0
        name = "memory.events" if self.mode == "cgroup2" else "memory.oom_control"
        try:
            fd = os.open(f"{g}/{name}", os.O_RDONLY)
            try:
                text = os.read(fd, 4096).decode()
            finally:
                os.close(fd)
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                with contextlib.suppress(ValueError):
                    return int(value)
        return 0

    def kill_slot(self, slot: int) -> None:
        """SIGKILL every process still in the slot's cgroups (used on reset)."""
        for g in self._groups[slot]:
            _kill_procs(g)

    def cleanup(self) -> None:
        for d in self._server_dirs:
            _remove_tree(d)
        self._server_dirs.clear()

    def describe(self) -> dict[str, object]:
        return {"mode": self.mode, "memory_bytes": self.memory_bytes, "pids": self.pids}
