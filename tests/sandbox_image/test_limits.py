"""Acceptance: runaway commands end with a clear result; the server and other slots go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid

from rollout.sandbox.client import SlotServerClient
from tests.sandbox_image.conftest import RunningServer, wait_until


def _procs_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _healthy_neighbour(client: SlotServerClient) -> None:
    r = await client.exec(3, "echo neighbour-ok")
    assert r.ok and r.stdout == "neighbour-ok\n"


async def test_timeout_kills_background_and_foreground(client: SlotServerClient) -> None:
    secs = f"1000.{uuid.uuid4().int % 10**6}"  # a unique argument to find survivors by
    r = await client.exec(0, f"sleep {secs} & sleep {secs}; echo never", timeout=1)
    assert r.timed_out and "never" not in r.stdout
    assert "timeout" in r.stderr
    assert wait_until(lambda: not _procs_with(f"sleep\0{secs}")), _procs_with(secs)


async def test_background_processes_live_until_the_slots_reset(client: SlotServerClient) -> None:
    """A slot is a container: what a command leaves running in the background (a detached
    subshell, nohup) outlives the command, and nothing of it survives the slot's reset."""
    secs = f"1000.{uuid.uuid4().int % 10**6}"
    r = await client.exec(0, f"(sleep {secs} &) ; nohup sleep {secs} >/dev/null 2>&1 & echo started")
    assert r.ok and "started" in r.stdout
    assert len(_procs_with(f"sleep\0{secs}")) == 2
    r = await client.exec(0, "ps -eo args")
    assert r.stdout.count(f"sleep {secs}") == 2, r.stdout
    await client.reset(0)
    assert not _procs_with(f"sleep\0{secs}")


async def test_fork_bomb_is_contained(client: SlotServerClient, server: RunningServer) -> None:
    bomb = client.exec(1, "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived", timeout=20)
    results = await asyncio.gather(bomb, _healthy_neighbour(client))
    r = results[0]
    assert r.exit_code is not None and not r.timed_out
    assert "fork" in r.stderr.lower()  # the pids limit refused further forks
    assert (await client.health())["ok"]
    await _healthy_neighbour(client)


async def test_memory_hog_is_killed_with_a_clear_message(client: SlotServerClient) -> None:
    hog = client.exec(1, "python -c 'b = bytearray(1 << 30); print(len(b))'", timeout=60)
    r, _ = await asyncio.gather(hog, _healthy_neighbour(client))
    assert r.exit_code != 0
    assert "memory" in r.stderr.lower()
    assert (await client.health())["ok"]


async def test_huge_output_is_capped_and_server_memory_stays_bounded(
        client: SlotServerClient, server: RunningServer) -> None:
    before = _rss_kib(server.proc.pid)
    flood = client.exec(2, "yes | head -c 2G; echo done", timeout=120)
    r, _ = await asyncio.gather(flood, _healthy_neighbour(client))
    assert r.truncated
    assert len(r.stdout) < 65536 + 200  # cap + the truncation marker
    assert "truncated" in r.stdout
    assert "output exceeded" in r.stderr or "done" in r.stdout
    assert _rss_kib(server.proc.pid) - before < 64 * 1024  # far below the 2 GiB printed
    await _healthy_neighbour(client)


async def test_reset_kills_running_commands_and_wipes(client: SlotServerClient) -> None:
    secs = f"1000.{uuid.uuid4().int % 10**6}"
    await client.write_file(0, "keep/me.txt", b"x")
    running = asyncio.ensure_future(client.exec(0, f"sleep {secs}", timeout=600))
    assert await asyncio.to_thread(wait_until, lambda: bool(_procs_with(f"sleep\0{secs}")))
    await client.reset(0)
    r = await asyncio.wait_for(running, 30)
    assert r.exit_code != 0
    assert await client.list_dir(0) == []
    assert wait_until(lambda: not _procs_with(f"sleep\0{secs}"))


async def test_commands_die_with_a_killed_server(tmp_path) -> None:
    """SIGKILL of the server (no cleanup code runs) must not leave its commands running."""
    import aiohttp
    import json
    import signal

    from tests.sandbox_image.conftest import READY, launch, stop

    proc, line, token = launch(str(tmp_path), "--slots", "1", "--isolation", "required")
    try:
        url = json.loads(line[len(READY):])["url"]
        secs = f"1000.{uuid.uuid4().int % 10**6}"
        async with aiohttp.ClientSession() as session:
            from rollout.sandbox.client import SlotServerClient

            client = SlotServerClient(session, url, token)
            running = asyncio.ensure_future(client.exec(0, f"sleep {secs}", timeout=600))
            assert await asyncio.to_thread(wait_until, lambda: bool(_procs_with(f"sleep\0{secs}")))
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: not _procs_with(f"sleep\0{secs}"))
            running.cancel()
    finally:
        stop(proc)


async def test_core_dumps_are_off(client: SlotServerClient) -> None:
    r = await client.exec(0, "ulimit -c")
    assert r.stdout.strip() == "0"


async def test_commands_start_with_default_signal_handling(client: SlotServerClient) -> None:
    # The server (Python) ignores SIGPIPE; a command must not inherit that, or `yes | head`
    # ends with "Broken pipe" errors instead of quietly.
    r = await client.exec(0, "grep SigIgn /proc/self/status; yes | head -c 2")
    ignored = int(r.stdout.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in commands"
    assert r.stdout.endswith("\ny\n") and r.stderr == "", r


async def test_server_as_pid_1_reaps_what_bwrap_leaves(tmp_path) -> None:
    """In a container the server is PID 1 and inherits every orphan, including the zombie
    sandbox init each bwrap command leaves; unreaped they would use up the slot's pids."""
    import json

    import aiohttp

    from tests.sandbox_image.conftest import READY, launch, stop

    # `unshare --pid --fork` makes the server PID 1 of a new pid namespace, as in Docker
    # (--mount-proc: bwrap needs a /proc that matches its pid namespace).
    unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    proc, line, token = launch(str(tmp_path), "--slots", "1", "--isolation", "required",
                               "--pids", "40", prefix=unshare)
    server_pid = None
    try:
        assert line.startswith(READY), line
        server_pid = _children(proc.pid)[0]
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, json.loads(line[len(READY):])["url"], token)
            for _ in range(60):  # more commands than the slot's pids limit
                r = await client.exec(0, "true")
                assert r.exit_code == 0, r.stderr
        assert wait_until(lambda: not _zombie_children(server_pid)), _zombie_children(server_pid)
    finally:
        if server_pid is not None:  # unshare ignores SIGTERM while it waits for its child
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGTERM)
        stop(proc)


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += map(int, f.read().split())
    return out


def _zombie_children(pid: int) -> list[int]:
    zombies = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    zombies.append(child)
        except OSError:
            continue
    return zombies


def test_server_cgroups_are_named_by_pid_and_start_time(tmp_path) -> None:
    """pids are reused fast on a busy host: a dead server's groups that carry our pid are
    stale (removed), a live server's are kept, and ours never reuse a predecessor's."""
    from sandbox_image import limits

    me, parent = os.getpid(), os.getppid()
    predecessor = tmp_path / f"slot-server-{me}-1"  # had our pid, started at another time
    (predecessor / "slot-0").mkdir(parents=True)
    live = tmp_path / f"slot-server-{limits._instance_id(parent)}"
    live.mkdir()
    gone = tmp_path / "slot-server-4194304"  # an old pid-only name whose pid does not exist
    gone.mkdir()
    # A server of another pid namespace whose pid here names nobody: not ours to judge.
    elsewhere = tmp_path / f"slot-server-1-1-{limits._pid_namespace() + 1}"
    elsewhere.mkdir()
    dead_here = tmp_path / f"slot-server-4194304-5-{limits._pid_namespace()}"
    dead_here.mkdir()
    groups = limits.SlotCgroups.__new__(limits.SlotCgroups)
    groups._server_dirs = []
    made = groups._make_server_dir(tmp_path)
    assert made.name == f"slot-server-{me}-{limits._start_time(me)}-{limits._pid_namespace()}"
    assert not predecessor.exists() and not gone.exists() and not dead_here.exists()
    assert live.exists() and elsewhere.exists()


def test_a_stale_tree_vanishing_mid_removal_is_no_error(tmp_path, monkeypatch) -> None:
    """Two servers starting at once both sweep the same dead server's groups: the tree one
    of them is walking may be gone before it lists it."""
    from sandbox_image import limits

    stale = tmp_path / "slot-server-4194304-5-1"
    (stale / "slot-0").mkdir(parents=True)
    listing = limits.Path.iterdir

    def raced(self):  # the other server removed it between our check and our listing
        if self == stale / "slot-0":
            (stale / "slot-0").rmdir()
        return listing(self)

    monkeypatch.setattr(limits.Path, "iterdir", raced)
    limits._remove_tree(stale)
    assert not stale.exists()


def test_a_failed_cgroup_setup_leaves_no_command_joining_removed_groups(
        tmp_path, monkeypatch) -> None:
    """The rlimit fallback after a setup error: the wrapper joins no group (it used to name
    the removed ones, so every command of the server exited 125 before it ran)."""
    import subprocess

    from sandbox_image import limits

    def half_then_fail(self, slots: int) -> bool:
        g = tmp_path / "slot-server-x" / "slot-0"
        g.mkdir(parents=True)
        self._server_dirs.append(g.parent)
        self._groups[0].append(g)
        raise FileNotFoundError(2, "No such file or directory", str(g))

    monkeypatch.setattr(limits.SlotCgroups, "_setup_v2", lambda self, slots: False)
    monkeypatch.setattr(limits.SlotCgroups, "_setup_v1", half_then_fail)
    groups = limits.SlotCgroups(1, memory_mb=256, pids=64)
    assert groups.mode == "rlimit"
    argv = groups.wrapper_for(0)
    assert "slot-server-x" not in " ".join(argv)
    out = subprocess.run([*argv, "echo", "ran"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "ran\n", out



async def test_commands_run_in_their_slots_cgroups(client: SlotServerClient) -> None:
    """Each command is in its own slot's groups (its wrapper joins them before it execs
    bwrap): the limits the fork bomb and memory hog tests meet are its slot's. Read from
    the host: inside, the sandbox's cgroup namespace shows its own group as "/". Where
    cgroups are not writable the server says so and rlimits stand in."""
    mode = (await client.health())["limits"]["mode"]
    assert mode in ("cgroup1", "cgroup2", "rlimit")
    marks = {slot: f"1000.{uuid.uuid4().int % 10**6}" for slot in (1, 2)}
    runs = [asyncio.ensure_future(client.exec(slot, f"sleep {secs}", timeout=2))
            for slot, secs in marks.items()]
    try:
        for slot, secs in marks.items():
            found: list[int] = []
            for _ in range(400):  # polls while the server starts it (sleeps 2 s if left)
                if found := _procs_with(f"sleep\0{secs}"):
                    break
                await asyncio.sleep(0.025)
            assert found, f"slot {slot}'s command never ran"
            pid = found[0]
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
            if mode == "cgroup2":
                wanted = [ln for ln in lines if ln.startswith("0::")]
            else:
                wanted = [ln for ln in lines
                          if {"memory", "pids"} & set(ln.split(":")[1].split(","))]
            if mode != "rlimit":
                assert len(wanted) == (1 if mode == "cgroup2" else 2), lines
                assert all(ln.endswith(f"/slot-{slot}") for ln in wanted), lines
    finally:
        for r in await asyncio.gather(*runs):
            assert r.timed_out, r
