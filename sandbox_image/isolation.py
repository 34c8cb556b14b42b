"""Bubblewrap: probing, the argv of one sandboxed command, and the default environment.

Inside the sandbox a command sees a root filesystem that is NOT the host's: either an
image's unpacked root (`root=<dir>`, bound read-only on /), or by default the *host view*
(sandbox_image/host_view.py): a small built root holding only the host's system directories
(/usr, /bin, /sbin, /lib*), a filtered copy of a few files of /etc (users, name resolution,
the dynamic linker, certificates) and the exposed interpreter prefixes. Never /root, /home, /work, /var, /opt, /srv, /mnt, caches,
other checkouts or the repo mirrors: what a slot can read is what a model can learn to copy.
On top: a fresh /dev and /proc (its own pid namespace), a private /tmp and /dev/shm, its
slot's workspace read-write at `workspace` (and nothing else writable), no network unless
enabled, no capabilities. With slot disks, /tmp and /dev/shm are the slot's own directories
on its disk (they persist until the slot's reset and count against its disk limit); without,
/tmp is a fresh tmpfs per command. The server's data dir (all slots), its token file and
any `hide` paths are masked by empty mounts wherever a visible tree would show them.
`expose` paths are host paths bound read-only at the same place: the interpreter a slot is
told to use (a virtualenv under /tmp, a pyenv build under /root) must exist inside it.
Masks are applied after exposes, so an exposed tree never reveals the data dir or the token.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sandbox_image.host_view import HostView

log = logging.getLogger(__name__)

# The documented default environment of every command. Nothing else from the server's
# environment is passed on (no tokens, no host secrets).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_env(home: str) -> dict[str, str]:
    return {
        "PATH": DEFAULT_PATH,
        "HOME": home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "USER": "sandbox",
        # git refuses to commit without an identity; give every slot a neutral one.
        "GIT_AUTHOR_NAME": "sandbox",
        "GIT_AUTHOR_EMAIL": "sandbox@localhost",
        "GIT_COMMITTER_NAME": "sandbox",
        "GIT_COMMITTER_EMAIL": "sandbox@localhost",
    }


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


class Bubblewrap:
    """Builds bwrap argv lists. Immutable after construction; safe to share."""

    def __init__(
        self,
        executable: str,
        *,
        network: bool,
        hide: list[str],
        expose: list[str] = (),
        tmp_size: int | None = None,
        root: str | None = None,
        view: HostView | None = None,
    ) -> None:
        """`root`: an image's unpacked root filesystem; None for the host view, `view` (the
        server's, shared by its Bubblewraps), or a private one if not given."""
        self.executable = shutil.which(executable) or executable
        self.network = network
        self.root = root
        self.view = None if root else (view or HostView.private())
        base = ["--ro-bind", root, "/"] if root else self.view.args
        self._head = [self.executable, *base, "--dev", "/dev", "--proc", "/proc"]
        # Without slot disks /tmp is a tmpfs per command, capped at `tmp_size` bytes if given.
        self._private_tmp = [*(["--size", str(tmp_size)] if tmp_size else []), "--tmpfs", "/tmp"]
        # Binds onto /tmp come after /tmp itself is set up (either way).
        self._prefix: list[str] = []
        shown = [] if self.view is None else self.view.roots
        self.exposed = exposed_paths(expose, already_shown=shown)
        for path in self.exposed:
            if self.view is not None:
                self.view.mount_point(path)
            self._prefix += ["--ro-bind", path, path]
        visible = [*shown, *self.exposed]
        for path in sorted(set(hide)):
            # Only what a visible tree would show needs a mask.
            if not os.path.lexists(path) or not any(_under(path, v) for v in visible):
                continue
            if os.path.isdir(path):
                self._prefix += ["--tmpfs", path]
            else:
                self._prefix += ["--ro-bind", "/dev/null", path]
        self._suffix = [
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *([] if network else ["--unshare-net"]),
            "--hostname", "sandbox",
            # bwrap run as root keeps every capability unless told otherwise.
            "--cap-drop", "ALL",
            # No --new-session (a new session costs ~5-10 ms here): stdin is /dev/null and
            # the server has dropped its controlling terminal (runner.detach_from_terminal),
            # so there is no terminal to inject into.
            "--die-with-parent",
            # Docker's masked and read-only /proc entries, where this kernel has them, and
            # /proc/sys read-only: bwrap run as root is uid 0 of the host, the owner of every
            # sysctl file (no capability is needed to write them).
            *_proc_masks(), "--ro-bind", "/proc/sys", "/proc/sys",
        ]

    def mount_args(self, workspace_host: str | None, workspace_inside: str,
                   scratch: tuple[str, str] | None = None, root: str | None = None
                   ) -> list[str]:
        """The filesystem view of a slot as bwrap args: the root (the image's, read-only;
        `root` a writable root of the slot's own instead; else the host view), /dev, /proc,
        /tmp and /dev/shm, exposed and masked paths, the workspace (None: it is part of
        `root`). `scratch`: host dirs bound on /tmp and /dev/shm (else a fresh tmpfs on /tmp,
        or with `root`, the root's own /tmp)."""
        if root is not None:
            head = [self.executable, "--bind", root, "/", "--dev", "/dev", "--proc", "/proc"]
            tmp = [] if scratch is None else ["--bind", scratch[1], "/dev/shm"]
        else:
            head = self._head
            tmp = (self._private_tmp if scratch is None
                   else ["--bind", scratch[0], "/tmp", "--bind", scratch[1], "/dev/shm"])
        ws: list[str] = []
        if workspace_host is not None:
            if self.view is not None:
                self.view.mount_point(workspace_inside)
            ws = ["--bind", workspace_host, workspace_inside]
        return [*head[1:], *tmp, *(self._prefix if root is None else []), *ws]

    def argv(self, workspace_host: str, workspace_inside: str, cwd_inside: str,
             command: str, scratch: tuple[str, str] | None = None,
             env: dict[str, str] | None = None) -> list[str]:
        """One sandboxed command. `env` is applied inside the sandbox only (--clearenv,
        --setenv): bwrap itself runs on the host and gets a fixed environment."""
        return [
            self.executable,
            *self.mount_args(workspace_host, workspace_inside, scratch),
            *self._suffix,
            *env_args(env or {}),
            "--chdir", cwd_inside,
            "--", "/bin/sh", "-c", command,
        ]

    def probe(self, workspace_inside: str) -> str | None:
        """Run `true` with the real flags. Returns None if usable, else why not."""
        if not shutil.which(self.executable):
            return f"bubblewrap not found ({self.executable!r})"
        with tempfile.TemporaryDirectory(prefix="slot-probe-") as ws:
            argv = self.argv(ws, workspace_inside, workspace_inside, "touch probe && true",
                             env=default_env("/tmp"))
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=20,
                                      env=default_env("/tmp"), stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"bubblewrap failed to run: {e}"
            if proc.returncode != 0:
                return f"bubblewrap exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
            if not os.path.exists(os.path.join(ws, "probe")):
                return "bubblewrap ran but the workspace bind is not writable"
        return None


_MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/timer_stats",
                 "/proc/sched_debug", "/proc/latency_stats", "/proc/sysrq-trigger")
_MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/proc/asound", "/proc/irq", "/proc/bus",
                "/proc/fs")
# The host-side environment of bwrap and the other helpers a command goes through: fixed,
# so nothing from an image or a request ever reaches a host process's dynamic loader.
HOST_ENV = {"PATH": DEFAULT_PATH, "LC_ALL": "C"}


def env_args(env: dict[str, str]) -> list[str]:
    """bwrap args that give the sandboxed command exactly `env` (and bwrap none of it)."""
    out = ["--clearenv"]
    for key, value in env.items():
        out += ["--setenv", key, value]
    return out


def _proc_masks() -> list[str]:
    """/dev/null over Docker's masked /proc files, an empty read-only tmpfs over its masked
    and read-only /proc directories."""
    args: list[str] = []
    for path in _MASKED_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in _MASKED_DIRS:
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
    return args


def interpreter_dirs(path: str) -> list[str]:
    """The directories a sandbox needs to run the interpreter `path` (a directory: itself).

    `path` is a file or a command looked up on PATH. For `<prefix>/bin/python` that is
    `<prefix>` (a virtualenv: its site-packages) and the prefix of the file the link resolves
    to (the base installation a venv points at).
    """
    if os.path.isdir(path):
        return [os.path.realpath(path)]
    found = shutil.which(path)
    if not found:
        return []
    dirs = []
    for exe in (os.path.abspath(found), os.path.realpath(found)):
        bin_dir = os.path.dirname(exe)
        dirs.append(os.path.dirname(bin_dir) if os.path.basename(bin_dir) == "bin" else bin_dir)
    return [os.path.realpath(d) for d in dict.fromkeys(dirs)]


def exposed_paths(paths: list[str] | tuple[str, ...],
                  already_shown: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The directories `paths` (directories or interpreters) need, outermost first, no nesting,
    leaving out those inside a tree the sandbox already shows (`already_shown`)."""
    real = sorted({d for p in paths if p for d in interpreter_dirs(p)})
    out: list[str] = []
    for path in real:
        if path == "/" or any(_under(path, o) for o in [*already_shown, *out]):
            continue
        out.append(path)
    return out


def choose_workspace_path(requested: str) -> str:
    """The workspace path inside the sandbox.

    bwrap cannot create a mount point on the read-only root, so the directory must exist on
    the host; create it if we may, else fall back to a path under the private /tmp.
    """
    try:
        Path(requested).mkdir(parents=True, exist_ok=True)
        return requested
    except OSError as e:
        fallback = "/tmp/workspace"
        log.warning("cannot create %s on the host (%s); using %s inside the sandbox",
                    requested, e.strerror, fallback)
        return fallback
