"""The subprocess launcher: clean start failures, graceful stop, no orphan when the parent dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from rollout.policy.embedded import EmbeddedServerProcess

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_start_failure_raises_with_the_log_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    server = EmbeddedServerProcess(cache_dir=blocker / "cache")
    with pytest.raises(RuntimeError, match="exited with code") as info:
        server.start(timeout=120)
    assert "not-a-dir" in str(info.value)  # the log tail names the problem
    assert server.proc is not None and server.proc.returncode is not None
    assert not server.running


async def test_stop_during_generation_is_graceful(checkpoint):
    server = EmbeddedServerProcess()
    url = server.start(timeout=240)
    pid = server.proc.pid
    outcome: dict[str, object] = {}

    def long_request() -> None:
        req = urllib.request.Request(
            f"{url}/v1/completions",
            data=json.dumps({"prompt": [1, 2, 3], "max_tokens": 4000, "ignore_eos": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=60)
            outcome["status"] = 200
        except urllib.error.HTTPError as exc:
            outcome["status"] = exc.code
        except OSError as exc:
            outcome["status"] = repr(exc)

    client = threading.Thread(target=long_request)
    client.start()

    async def decoding() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return json.load(resp)["active"] >= 1

    await wait_for(decoding)
    server.stop(grace=20)
    client.join(timeout=30)
    assert server.proc.returncode == 0  # exited on SIGTERM by itself, not killed
    assert outcome["status"] != 200  # the in-flight request was failed, not left hanging
    assert not _alive(pid)
    assert not server.ready_file.parent.exists()  # no temp dir left behind
    server.stop()  # idempotent


HOLDER = """
import sys, time
from rollout.policy.embedded import EmbeddedServerProcess
server = EmbeddedServerProcess()
server.start(timeout=240)
print(server.proc.pid, flush=True)
time.sleep(600)
"""


async def test_server_exits_when_its_parent_is_killed(checkpoint):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        server_pid = int(holder.stdout.readline())
        assert _alive(server_pid)
        holder.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only --exit-with-parent helps
        holder.wait(timeout=10)

        async def gone() -> bool:
            return not _alive(server_pid)

        await wait_for(gone, deadline=60, interval=0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
