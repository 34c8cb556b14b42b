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


def _bwrap_with_sync(tmp_path, command: str) -> list[str]:
    from sandbox_image.isolation import Bubblewrap
    from sandbox_image.runner import BLOCK_FD, INFO_FD

    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    bw = Bubblewrap("bwrap", network=False, hide=[])
    return bw.argv(str(ws), "/w", "/w", command, sync_fds=(INFO_FD, BLOCK_FD))


async def test_a_joined_sandbox_runs_after_its_join(exit_watch: str, tmp_path) -> None:
    """The server joins the sandbox's first process (not bwrap itself) before it goes on."""
    seen: list[int] = []

    def join(pid: int) -> None:
        assert not (tmp_path / "ws" / "ran").exists()  # nothing of the command ran yet
        seen.append(pid)

    argv = _bwrap_with_sync(tmp_path, "touch /w/ran; echo ok")
    started: list[int] = []
    r = await run_command(argv, env={"PATH": "/usr/bin:/bin"}, cwd=None, timeout=30,
                          output_cap=1000, output_kill=100_000, join=join,
                          on_start=started.append)
    assert (r.exit_code, r.stdout) == (0, "ok\n"), r.stderr
    assert len(seen) == 1 and seen[0] != started[0]
    assert (tmp_path / "ws" / "ran").exists()


async def test_a_failed_join_runs_nothing(exit_watch: str, tmp_path) -> None:
    """A sandbox that could not be put in its slot's cgroups never runs the command (it would
    run unlimited): exit 125 and the reason, as the shell wrapper reported it."""
    def join(pid: int) -> None:
        raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/x/tasks")

    argv = _bwrap_with_sync(tmp_path, "touch /w/ran; echo ran")
    r = await run_command(argv, env={"PATH": "/usr/bin:/bin"}, cwd=None, timeout=30,
                          output_cap=1000, output_kill=100_000, join=join)
    assert r.exit_code == 125 and r.stdout == ""
    assert "not run: cannot join the slot's cgroups" in r.stderr
    assert not (tmp_path / "ws" / "ran").exists()


async def test_a_bwrap_failing_before_its_sandbox_reports_its_error(exit_watch: str, tmp_path) -> None:
    """A bwrap that fails before its sandbox exists writes no pid: its own error comes back."""
    argv = _bwrap_with_sync(tmp_path, "echo ran")
    argv.insert(1, "--no-such-bwrap-flag")
    r = await run_command(argv, env={"PATH": "/usr/bin:/bin"}, cwd=None, timeout=30,
                          output_cap=1000, output_kill=100_000, join=lambda pid: None)
    assert r.exit_code != 0 and not r.timed_out and r.stdout == ""
    assert "no-such-bwrap-flag" in r.stderr
