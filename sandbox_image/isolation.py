"""Bubblewrap: probing, the argv of one sandboxed command, and the default environment.

Inside the sandbox a command sees a root filesystem that is NOT the host's: either an
image's unpacked root (`root=<dir>`, bound read-only on /), or by default the *host view*:
an empty read-only root holding only the host's system directories (/usr, /bin, /sbin,
/lib*), a few files of /etc (users, name resolution, the dynamic linker, certificates) and
the exposed interpreter prefixes. Never /root, /home, /work, /var, /opt, /srv, /mnt, caches,
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


# The host view: system directories (a symlink such as /bin -> usr/bin stays a symlink) and
# the files of /etc that programs need to run; nothing else of the host.
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_ETC = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf",
            "gai.conf", "protocols", "services", "networks", "ld.so.cache", "ld.so.conf",
            "ld.so.conf.d", "alternatives", "ssl", "ca-certificates", "ca-certificates.conf",
            "localtime", "timezone", "os-release", "debian_version", "mime.types", "magic",
            "shells", "inputrc", "locale.alias", "mke2fs.conf")


def host_view_args() -> list[str]:
    """bwrap options that build the host view on bwrap's empty root."""
    args: list[str] = []
    for d in HOST_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--dir", "/etc"]
    for name in HOST_ETC:
        path = f"/etc/{name}"
        if os.path.exists(path):  # a dangling symlink (e.g. resolv.conf) is left out
            args += ["--ro-bind", path, path]
    args += ["--dir", "/var", "--dir", "/home"]
    return args


def _host_view_roots() -> list[str]:
    return [os.path.realpath(d) for d in HOST_DIRS if os.path.isdir(d)]


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
    ) -> None:
        """`root`: an image's unpacked root filesystem; None for the host view."""
        self.executable = shutil.which(executable) or executable
        self.network = network
        self.root = root
        base = ["--ro-bind", root, "/"] if root else host_view_args()
        self._head = [self.executable, *base, "--dev", "/dev", "--proc", "/proc"]
        # Without slot disks /tmp is a tmpfs per command, capped at `tmp_size` bytes if given.
        self._private_tmp = [*(["--size", str(tmp_size)] if tmp_size else []), "--tmpfs", "/tmp"]
        # Binds onto /tmp come after /tmp itself is set up (either way).
        self._prefix: list[str] = []
        shown = [] if root else _host_view_roots()
        self.exposed = exposed_paths(expose, already_shown=shown)
        for path in self.exposed:
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
        # The host view's root is bwrap's own tmpfs: read-only once every mount point exists.
        self._seal = [] if root else ["--remount-ro", "/"]
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
        ]

    def argv(self, workspace_host: str, workspace_inside: str, cwd_inside: str,
             command: str, scratch: tuple[str, str] | None = None) -> list[str]:
        """`scratch`: host dirs bound on /tmp and /dev/shm (else a fresh tmpfs on /tmp)."""
        tmp = (self._private_tmp if scratch is None
               else ["--bind", scratch[0], "/tmp", "--bind", scratch[1], "/dev/shm"])
        return [
            *self._head,
            *tmp,
            *self._prefix,
            "--bind", workspace_host, workspace_inside,
            *self._seal,
            *self._suffix,
            "--chdir", cwd_inside,
            "--", "/bin/sh", "-c", command,
        ]

    def probe(self, workspace_inside: str) -> str | None:
        """Run `true` with the real flags. Returns None if usable, else why not."""
        if not shutil.which(self.executable):
            return f"bubblewrap not found ({self.executable!r})"
        with tempfile.TemporaryDirectory(prefix="slot-probe-") as ws:
            argv = self.argv(ws, workspace_inside, workspace_inside, "touch probe && true")
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
