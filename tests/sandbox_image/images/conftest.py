"""Fixtures: a real two-layer test image built from this machine's /bin/sh, ls and cat (with
their shared libraries), and a fresh image store per test."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sandbox_image.images import ImageStore

from .build import OPAQUE, WHITEOUT, BuiltImage, Dir, Symlink, build_oci_layout, host_binaries, host_files

PROJECT_ROOT = str(Path(__file__).resolve().parents[3])


def base_layer() -> dict:
    """A runnable base: sh, ls, cat and their libraries, the host's merged-usr symlinks, mount
    points for bwrap, and a small tree the second layer changes."""
    return {
        **host_files("/bin", "/lib", "/lib64"),
        **host_binaries("sh", "ls", "cat"),
        "proc": Dir(), "dev": Dir(), "tmp": Dir(0o1777),
        "etc/motd": b"hello from the test image\n",
        "etc/gone": b"deleted by layer 2\n",
        "etc/gone-dir/inner": b"deleted with its dir\n",
        "opt/data/old.txt": b"hidden by the opaque dir\n",
        "opt/data/sub/deep.txt": b"hidden too\n",
        "usr/bin/python-link": Symlink("/usr/bin/dash"),  # absolute target: must be kept as is
    }


def top_layer() -> dict:
    return {
        "etc/.wh.gone": WHITEOUT,
        "etc/.wh.gone-dir": WHITEOUT,
        "opt/data/kept.txt": b"same layer as the opaque marker, written before it\n",
        f"opt/data/{OPAQUE}": WHITEOUT,
        "opt/data/new.txt": b"new in layer 2\n",
        "etc/.wh.motd-not-there": WHITEOUT,  # whiteout of something absent: a no-op
    }


RUN_CONFIG = {"Env": ["PATH=/usr/bin:/bin", "GREETING=hi"], "WorkingDir": "/opt/data", "User": "1000:1000",
              "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo ok"]}


@pytest.fixture(scope="session")
def sh_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_oci_layout(tmp_path_factory.mktemp("images") / "sh", [base_layer(), top_layer()], RUN_CONFIG)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    s = ImageStore(tmp_path / "store", max_bytes=1 << 30)
    yield s
    await s.close()


def tree(root: Path) -> dict[str, str]:
    """path -> kind/content summary of a tree, for comparing unpacked images."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = f"{p.stat().st_size}:{oct(p.stat().st_mode & 0o7777)}"
    return out


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a condition (a state change this test causes), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": PROJECT_ROOT}


PYTHON = sys.executable


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """A small Debian base with dpkg, apt, bash and coreutils (debian_image.py)."""
    from .debian_image import build_debian_image
    return build_debian_image(tmp_path_factory.mktemp("images") / "debian")


@pytest.fixture(scope="session")
def python_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """Debian's python3.11 with its stdlib (python_image.py), no testbed."""
    from .python_image import build_python_image
    return build_python_image(tmp_path_factory.mktemp("images") / "python")
