"""A real slot server (subprocess, real bubblewrap, real cgroups) shared by this package.

Its data dir and token file live under /var/tmp, outside the sandbox's private /tmp, so
the tests prove they are masked explicitly rather than hidden by accident.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from rollout.sandbox.client import SlotServerClient

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
READY = "SLOT_SERVER_READY "


@dataclass
class RunningServer:
    url: str
    token: str
    token_file: str
    data_dir: str
    proc: subprocess.Popen
    isolation: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def launch(root: str, *flags: str, token: str | None = None, wait: bool = True,
           prefix: list[str] | None = None) -> tuple[subprocess.Popen, str, str]:
    """Start `python -m sandbox_image` (under `prefix`, e.g. unshare, if given); returns
    (process, first stdout line, token)."""
    token = token if token is not None else secrets.token_urlsafe(24)
    token_file = os.path.join(root, "token")
    with open(token_file, "w") as f:
        f.write(token)
    os.chmod(token_file, 0o600)
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT}
    env.pop("SLOT_SERVER_TOKEN", None)
    argv = [*(prefix or []), sys.executable, "-m", "sandbox_image", "--data-dir", os.path.join(root, "data"),
            "--token-file", token_file, "--port", "0", *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline() if wait else ""
    return proc, line, token


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    path_env = f"PATH={os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin"
    yield from running_server(
        "slot-test-", "--slots", "4", "--memory-mb", "256", "--pids", "128",
        "--output-cap", "65536", "--output-kill", str(8 << 20), "--file-cap", str(1 << 20),
        "--isolation", "required", "--env", path_env)


def running_server(prefix: str, *flags: str) -> Iterator[RunningServer]:
    """Start a server with `flags` in a fresh dir under /var/tmp; yield it; stop and clean."""
    root = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    proc, line, token = launch(root, *flags)
    assert line.startswith(READY), f"server did not start: {line!r} {proc.stderr.read()}"
    ready = json.loads(line[len(READY):])
    yield RunningServer(ready["url"], token, os.path.join(root, "token"),
                        os.path.join(root, "data"), proc, ready["isolation"])
    stop(proc)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[SlotServerClient]:
    async with aiohttp.ClientSession() as session:
        c = SlotServerClient(session, server.url, server.token)
        yield c
        # Leave every slot clean for the next test.
        for i in range(4):
            await c.reset(i)


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `condition()` until true or the deadline passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


_PRELOAD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd < 0) return;
    char line[256];
    char exe[200] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    int n = snprintf(line, sizeof line, "%d %s\n", (int)getuid(), exe);
    write(fd, line, n);
    close(fd);
}
"""


@pytest.fixture(scope="session")
def preload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(a shared object that appends a line to a marker file whenever a process loads it,
    that marker's path): both on the host, under /var/tmp, which no slot can see."""
    root = tempfile.mkdtemp(prefix="preload-", dir="/var/tmp")
    os.chmod(root, 0o755)
    marker = os.path.join(root, "marker")
    src = os.path.join(root, "mark.c")
    Path(src).write_text(_PRELOAD_C)
    so = os.path.join(root, "libmark.so")
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the LD_PRELOAD probe (.ci/install installs gcc)"
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", so, src], check=True)
    # The probe works: a host process that loads it leaves a line.
    subprocess.run(["/bin/true"], env={"LD_PRELOAD": so}, check=True)
    assert Path(marker).read_text().strip().endswith("/true")
    os.unlink(marker)
    yield so, marker
    shutil.rmtree(root, ignore_errors=True)
