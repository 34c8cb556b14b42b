"""A small real SWE-smith-style image built from this machine's files (no registry, no
Docker): Debian's python3.11 with its stdlib, git, a POSIX shell and coreutils (with their
shared libraries), a conda-style env at /opt/miniconda3/envs/testbed holding pytest, and a
repository at /testbed with its history (what a real SWE-smith image holds: the clean code,
i.e. the fix of every instance of that repo).

    built = build_python_image(tmp / "layout", testbed=some_git_checkout)
    # an OCI layout; `oci:<path>` is its source for `sandbox.images`
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

from .build import BuiltImage, Dir, Entry, File, Symlink, build_oci_layout, host_binaries, \
    host_files, shared_libraries

PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
ENV = "opt/miniconda3/envs/testbed"
TOOLS = ("sh", "git", "rm", "mkdir", "rmdir", "cat", "ls", "find", "xargs", "tail", "head",
         "cp", "mv", "env", "sed", "grep", "dirname", "basename", "touch", "wc", "sort",
         "chmod", "ln", "diff", "tr", "cut", "uname", "id", "readlink", "realpath", "stat")
# Left out of the stdlib copy: big and never imported by a test run.
_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
         "__pycache__", "config-3.11-x86_64-linux-gnu", "distutils", "unittest/test"}
# What pytest needs, and the plugins a bundled repo's profile may autoload.
PYTEST_PACKAGES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py.py",
                   "pytest_timeout.py", "pytest_asyncio", "pygments", "typing_extensions.py")


def _tree(src: str, dest: str, skip: set[str] = frozenset()) -> dict[str, Entry]:
    """Every file and symlink under host dir `src`, at `dest` in the image."""
    entries: dict[str, Entry] = {dest.strip("/"): Dir()}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in skip and os.path.normpath(os.path.join(rel, d)) not in skip)
        base = os.path.normpath(os.path.join(dest, rel)).strip("/")
        for d in dirnames:
            full = os.path.join(dirpath, d)
            entries[f"{base}/{d}"] = Symlink(os.readlink(full)) if os.path.islink(full) else Dir()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                entries[f"{base}/{name}"] = Symlink(os.readlink(full))
            elif os.path.isfile(full):
                entries[f"{base}/{name}"] = File(Path(full), os.stat(full).st_mode & 0o777)
    return entries


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def system_layer() -> dict[str, Entry]:
    """The OS part: mount points, users, the shell and tools, python3.11 and its stdlib."""
    entries: dict[str, Entry] = {
        **host_files("/bin", "/lib", "/lib64", "/sbin"),
        "proc": Dir(), "dev": Dir(), "tmp": Dir(0o1777), "root": Dir(0o700),
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": b"root:x:0:\n",
        "etc/hosts": b"127.0.0.1 localhost\n",
        **host_binaries(*TOOLS, PYTHON),
        "usr/bin/python3": Symlink("python3.11"),
    }
    entries.update(_tree(STDLIB, STDLIB, _SKIP))
    dynload = os.path.join(STDLIB, "lib-dynload")
    libs = sorted({lib for so in os.listdir(dynload) if so.endswith(".so")
                   for lib in shared_libraries(os.path.join(dynload, so))})
    for path, entry in host_files(*libs).items():
        entries.setdefault(path, entry)
    return entries


def env_layer() -> dict[str, Entry]:
    """A conda-style env `testbed` (a venv over python3.11) holding pytest."""
    site = f"{ENV}/lib/python3.11/site-packages"
    entries: dict[str, Entry] = {
        f"{ENV}/bin/python": Symlink("/usr/bin/python3.11"),
        f"{ENV}/bin/python3": Symlink("python"),
        f"{ENV}/pyvenv.cfg": b"home = /usr/bin\ninclude-system-site-packages = false\n"
                             b"version = 3.11.2\n",
        site: Dir(),
    }
    src = _site_packages()
    for name in PYTEST_PACKAGES:
        path = os.path.join(src, name)
        if os.path.isdir(path):
            entries.update(_tree(path, f"{site}/{name}", {"__pycache__"}))
        elif os.path.isfile(path):
            entries[f"{site}/{name}"] = File(Path(path))
        # Its metadata: pytest finds plugins and checks versions through importlib.metadata.
        dist = name.removesuffix(".py").lstrip("_").lower()
        for info in sorted(Path(src).glob("*.dist-info")):
            if info.name.lower().split("-", 1)[0] == dist:
                entries.update(_tree(str(info), f"{site}/{info.name}"))
    return entries


def testbed_layer(repo: Path) -> dict[str, Entry]:
    """`repo` (a checkout with its .git) at /testbed, plus an untracked build artifact that
    a prepare must keep (as a real image keeps its egg-info)."""
    entries = _tree(str(repo), "testbed")
    entries["testbed/build.egg-info/PKG-INFO"] = b"Metadata-Version: 2.1\nName: testbed\n"
    return entries


def clone_testbed(bundle: Path, dest: Path) -> Path:
    """A checkout of a bundled mirror's main branch (the clean code), history included."""
    subprocess.run(["git", "clone", "-q", "-b", "main", str(bundle), str(dest)], check=True)
    return dest


def build_python_image(dest: Path, testbed: Path | None = None) -> BuiltImage:
    layers: list[dict[str, Entry]] = [system_layer(), env_layer()]
    if testbed is not None:
        layers.append(testbed_layer(testbed))
    config = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
              "WorkingDir": "/testbed", "Cmd": ["/bin/sh"]}
    return build_oci_layout(dest, layers, config, compress=None)

