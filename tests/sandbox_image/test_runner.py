"""The command runner in-process: both ways of waiting for a child give the same results."""

from __future__ import annotations

import pytest

from sandbox_image import spawn
from sandbox_image.runner import run_command


@pytest.fixture(params=["default", "thread"])
def exit_watch(request, monkeypatch) -> str:
    """default: a pidfd where the kernel has them (5.3+); thread: the fallback."""
    if request.param == "thread":
        monkeypatch.setattr(spawn, "_PIDFD", False)
    return request.param


async def _run(command: str, timeout: float = 10.0, cwd: str | None = None):
    return await run_command(["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin"},
                             cwd=cwd, timeout=timeout, output_cap=1000, output_kill=100_000)


async def test_exit_code_and_both_streams(exit_watch: str, tmp_path) -> None:
    r = await _run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = await _run("pwd", cwd=str(tmp_path))  # the Popen path (cwd on the host)
    assert r.stdout == f"{tmp_path}\n"


async def test_timeout_and_output_kill(exit_watch: str) -> None:
    r = await _run("sleep 30", timeout=0.5)
    assert r.timed_out and r.exit_code == 137 and "timeout" in r.stderr
    r = await _run("yes")
    assert r.truncated and "output exceeded" in r.stderr and len(r.stdout) < 1200


@pytest.mark.parametrize("children_files", [True, False])
def test_child_listing_finds_children(children_files: bool, monkeypatch) -> None:
    """reap_orphans' child list, from /proc/<tid>/children or (old kernels) a /proc scan."""
    import subprocess

    monkeypatch.setattr(spawn, "_CHILDREN_FILES", children_files and spawn._CHILDREN_FILES)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in spawn._child_pids()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in spawn._child_pids()
