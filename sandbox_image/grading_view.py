"""The grading view of an image slot with a writable root: the agent's files, the image's
toolchain.

A state-graded task (terminal tasks) is graded in the slot the agent used, whose root is an
overlay the agent could write as root: it could have replaced `/usr/bin/python3`, `/bin/sh`,
pytest in site-packages, or dropped a `sitecustomize.py` or `.pth` file on the interpreter's
path. A grading command (`ExecRequest.grading`) therefore sees:
- the slot's root overlay, read-write (the task's state: the workspace, /app, /etc, /home);
- over it, read-only from the image's pristine root (the overlay's lower layer, never its
  upper one): the system trees (`/usr`, `/bin`, `/sbin`, `/lib*`), the dynamic loader's
  files in /etc (`ld.so.preload`, `ld.so.cache`, `ld.so.conf*`: an empty preload where the
  image has none) and Debian's `/etc/python3*` (its `sitecustomize.py` lives there; an
  empty one where the stdlib links to one the image lacks);
- the image's interpreter prefixes, read-only from the image too: the parent of each
  directory of the image's PATH that holds a `python*` executable outside the system trees
  (a conda env, `/app/.venv` inside the workdir: the venv as built, not the agent's copy).

Harbor's verifier directories, `/tests` and `/logs/verifier`, are fresh tmpfs mounts of the
grading command's own: processes the agent left running (they share the slot's files, not
this mount namespace) cannot write the reward file or the tests once they are in place.

A destination the agent turned into something else (a symlink where the image has a
directory, or a file) is refused (`ViewError`): bubblewrap would follow the agent's symlink.
"""

from __future__ import annotations

import os
import stat

PRIVATE_DIRS = ("tests", "logs/verifier")
SYSTEM_TREES = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
LOADER_FILES = ("etc/ld.so.preload", "etc/ld.so.cache", "etc/ld.so.conf", "etc/ld.so.conf.d")
_PREFIX_MAX = 16  # interpreter prefixes taken from one image's PATH


class ViewError(Exception):
    """The slot's files cannot take the image's toolchain (the message says why)."""


def _kind(path: str) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _check_dest(root: str, rel: str, want: str) -> None:
    """`rel` in the slot's root: every directory on the way a real directory (or absent), the
    path itself absent or of the image's kind `want` (the same link for a link)."""
    cur = root
    parts = rel.split("/")
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        got = _kind(cur)
        if got is None:
            return  # bubblewrap makes the missing directories
        if got != "dir":
            raise ViewError(f"/{rel}: /{os.path.relpath(cur, root)} is no longer a directory")
    got = _kind(os.path.join(root, rel))
    if got is not None and got != want:
        raise ViewError(f"/{rel} was replaced ({got.split(':')[0]} where the image has "
                        f"{want.split(':')[0]})")


def interpreter_prefixes(lower: str, path_var: str, workdir: str) -> list[str]:
    """Image-relative prefixes (no leading /) of the interpreters on the image's PATH, outside
    the system trees: `<prefix>/bin/python*` executable in the image. Never the root, the
    workdir or one of its parents (that would hide the agent's work)."""
    out: list[str] = []
    for entry in path_var.split(":"):
        d = os.path.normpath(entry).strip("/") if entry.startswith("/") else ""
        if not d or d.split("/")[0] in SYSTEM_TREES or ".." in d.split("/"):
            continue
        prefix = os.path.dirname(d) if os.path.basename(d) == "bin" else d
        ws = workdir.strip("/")
        if not prefix or ws == prefix or ws.startswith(prefix + "/"):
            continue
        host = os.path.join(lower, d)
        if _kind(host) != "dir" or _kind(os.path.join(lower, prefix)) != "dir":
            continue
        try:
            names = os.listdir(host)
        except OSError:
            continue
        if any(n.startswith("python") for n in names) and prefix not in out:
            out.append(prefix)
        if len(out) >= _PREFIX_MAX:
            break
    # Outermost first, so a nested prefix is not bound under its parent's bind twice.
    return sorted(set(out), key=lambda p: (p.count("/"), p))


def mount_args(lower: str, root: str, prefixes: list[str]) -> list[str]:
    """bubblewrap args laying the image's toolchain (from `lower`, the image's root as the
    slot's overlay shows it) over the slot's root `root` (its overlay, host path). Raises
    ViewError when the agent changed what a bind would land on."""
    args: list[str] = []
    for rel in [*SYSTEM_TREES, *_python_etc(lower), *prefixes]:
        want = _kind(os.path.join(lower, rel))
        if want is None:
            continue
        _check_dest(root, rel, want)
        if want == "dir":
            args += ["--ro-bind", os.path.join(lower, rel), "/" + rel]
        # A link of the image (merged /usr: /bin -> usr/bin) is checked to be the same link
        # in the slot: it then leads into a tree bound above.
    for rel in LOADER_FILES:
        want = _kind(os.path.join(lower, rel))
        _check_dest(root, rel, want or "file")
        if want in ("dir", "file"):
            args += ["--ro-bind", os.path.join(lower, rel), "/" + rel]
        elif want is None and os.path.lexists(os.path.join(root, rel)):
            # The image has none; the agent's would be read by every process's loader.
            args += ["--ro-bind", "/dev/null", "/" + rel]
        elif want is None and rel == "etc/ld.so.preload":
            args += ["--ro-bind", "/dev/null", "/" + rel]
    for rel in PRIVATE_DIRS:
        _check_dest(root, rel, "dir")
        args += ["--tmpfs", "/" + rel]
    for rel in _dangling_hooks(lower):
        # The image's stdlib links its sitecustomize to a file it lacks: an empty one, not
        # the agent's.
        _check_dest(root, rel, "file")
        args += ["--ro-bind", "/dev/null", "/" + rel]
    return args


def _dangling_hooks(lower: str) -> list[str]:
    """Start-up hooks of the image's interpreters that link outside the trees bound above to
    a path the image lacks (Debian: /usr/lib/python3.X/sitecustomize.py ->
    /etc/python3.X/sitecustomize.py): image-relative targets."""
    out: list[str] = []
    for lib in ("usr/lib", "usr/local/lib"):
        try:
            names = sorted(n for n in os.listdir(os.path.join(lower, lib)) if n.startswith("python"))
        except OSError:
            continue
        for name in names:
            for hook in ("sitecustomize.py", "usercustomize.py"):
                kind = _kind(os.path.join(lower, lib, name, hook)) or ""
                if not kind.startswith("link:/"):
                    continue
                target = os.path.normpath(kind[len("link:"):]).strip("/")
                if target.split("/")[0] not in SYSTEM_TREES and ".." not in target.split("/") \
                        and _kind(os.path.join(lower, target)) is None:
                    out.append(target)
    return out


def _python_etc(lower: str) -> list[str]:
    """Debian's /etc/python3.X (its sitecustomize.py) in the image."""
    try:
        names = os.listdir(os.path.join(lower, "etc"))
    except OSError:
        return []
    return sorted(f"etc/{n}" for n in names if n.startswith("python3"))
