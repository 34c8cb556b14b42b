"""Hostile commands and requests (issue 18), kept as regression tests.

Already covered elsewhere and not repeated here: fork bomb, memory hog, output flood, reset
kills, commands dying with a SIGKILLed server (test_limits.py); other slots' files, writes
outside the workspace, host processes, network, the token, capabilities, the terminal
(test_isolation.py); path traversal, symlink escapes, unsafe archives (test_files.py).

Here: per-slot disk and inode limits (workspace, /tmp, /dev/shm), mounts that never leak,
signals to the server, and strict validation of every request (a fuzz test included).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.sandbox.client import SlotServerClient
from rollout.types import SandboxError
from tests.sandbox_image.conftest import (READY, RunningServer, launch, running_server, stop,
                                          wait_until)
from tests.sandbox_image.test_limits import _procs_with

DISK_MB = 64
INODES = 4096
TIMEOUT_CAP = 5.0


@pytest.fixture(scope="module")
def hserver() -> Iterator[RunningServer]:
    yield from running_server(
        "slot-hostile-", "--slots", "2", "--isolation", "required", "--disk-mb", str(DISK_MB),
        "--inodes", str(INODES), "--exec-timeout-cap", str(TIMEOUT_CAP),
        "--output-cap", "65536", "--output-kill", str(4 << 20), "--file-cap", str(1 << 20),
        "--memory-mb", "256", "--pids", "64")


@pytest.fixture
async def hclient(hserver: RunningServer) -> AsyncIterator[SlotServerClient]:
    async with aiohttp.ClientSession() as session:
        c = SlotServerClient(session, hserver.url, hserver.token)
        yield c
        for i in range(2):
            await c.reset(i)


def _allocated_bytes(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def _loop_backing_files() -> list[str]:
    found = []
    for dev in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{dev}/loop/backing_file") as f:
                found.append(f.read().strip())
        except OSError:
            continue
    return found


def _host_mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


# --- disk and inodes ----------------------------------------------------------------------


async def test_a_slot_cannot_write_past_its_disk_and_the_host_is_untouched(
        hclient: SlotServerClient, hserver: RunningServer) -> None:
    host_free = shutil.disk_usage(hserver.data_dir).free
    used_before = _allocated_bytes(hserver.data_dir)
    # 1 GiB asked for, 64 MiB allowed; meanwhile the other slot's writes succeed.
    hog = hclient.exec(0, "dd if=/dev/zero of=big bs=1M count=1024; echo rc=$?; df -k .",
                       timeout=TIMEOUT_CAP)
    r, other = await asyncio.gather(
        hog, hclient.exec(1, "head -c 8000000 /dev/zero > f && wc -c < f", timeout=TIMEOUT_CAP))
    assert "No space left on device" in r.stdout + r.stderr, r
    assert "rc=0" not in r.stdout
    assert other.ok and other.stdout.strip() == "8000000", other
    size_kb = int(r.stdout.split("\n")[-2].split()[1])
    assert size_kb <= DISK_MB * 1024  # df inside shows the slot's disk, not the host's
    grown = _allocated_bytes(hserver.data_dir) - used_before
    assert grown <= 2 * DISK_MB << 20, grown  # slot 0 at its limit, slot 1 8 MB, metadata
    assert host_free - shutil.disk_usage(hserver.data_dir).free < 512 << 20
    assert (await hclient.health())["ok"]


async def test_a_slot_cannot_create_more_inodes_than_its_limit(
        hclient: SlotServerClient) -> None:
    r = await hclient.exec(0, "mkdir d && cd d && i=0; while true > f$i; do i=$((i+1)); done; "
                              "echo made=$i", timeout=TIMEOUT_CAP)
    made = int(r.stdout.split("made=")[1])
    assert 0 < made < INODES, r
    assert "No space left on device" in r.stderr
    other = await hclient.exec(1, "touch a b c && ls | wc -l", timeout=TIMEOUT_CAP)
    assert other.stdout.strip() == "3"


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
async def test_tmp_and_shm_count_against_the_slot_disk(hclient: SlotServerClient,
                                                       where: str) -> None:
    r = await hclient.exec(0, f"df -k {where} | tail -1; head -c 100000000 /dev/zero > "
                              f"{where}/x; echo rc=$?", timeout=TIMEOUT_CAP)
    assert int(r.stdout.split()[1]) <= DISK_MB * 1024, r
    assert "No space left on device" in r.stderr and "rc=0" not in r.stdout, r


async def test_sparse_files_and_fallocate_do_not_get_past_the_limit(
        hclient: SlotServerClient) -> None:
    r = await hclient.exec(0, "fallocate -l 1G f1; echo fa=$?; truncate -s 100G sparse; "
                              "echo tr=$?; dd if=/dev/zero of=sparse bs=1M count=200 "
                              "conv=notrunc 2>&1 | tail -1; du -sk . | cut -f1",
                           timeout=TIMEOUT_CAP)
    assert "fa=0" not in r.stdout  # no 1 GiB reservation on a 64 MiB disk
    assert "No space left" in r.stdout + r.stderr
    assert int(r.stdout.split()[-1]) <= DISK_MB * 1024, r


async def test_reset_frees_the_disk(hclient: SlotServerClient) -> None:
    r = await hclient.exec(0, "head -c 200000000 /dev/zero > big; : > /tmp/t; echo done",
                           timeout=TIMEOUT_CAP)
    assert "No space left" in r.stderr
    await hclient.reset(0)
    r = await hclient.exec(0, "ls -A; echo --; ls -A /dev/shm; test -e /tmp/t && echo t-left; "
                              "head -c 50000000 /dev/zero > again && echo wrote", timeout=TIMEOUT_CAP)
    assert r.stdout.split() == ["--", "wrote"], r


async def test_back_to_back_resets_of_one_slot_each_leave_it_a_mounted_disk(
        hclient: SlotServerClient) -> None:
    """A slot alternates between two mount points and its old disk is released in the
    background: a reset right after a reset must wait for that release, not mount on top
    of the disk being released (the mount failed, or the release unmounted the new disk).
    Dirty data on the disk makes its release (syncfs) slow enough to be overtaken."""
    for n in range(6):
        r = await hclient.exec(1, "head -c 30000000 /dev/zero > big", timeout=TIMEOUT_CAP)
        assert r.ok, r
        await hclient.reset(1)
        await hclient.reset(1)  # onto the mount point the first disk is being released from
        r = await hclient.exec(1, f"echo {n} > f && cat f && ls -A && df -k . | tail -1",
                               timeout=TIMEOUT_CAP)
        lines = r.stdout.splitlines()
        assert r.ok and lines[:3] == [str(n), "f"] + lines[2:3], r
        assert len(lines) == 3, r  # a fresh disk holding just f
        assert int(lines[2].split()[1]) <= DISK_MB * 1024, r  # the slot's disk, not the host's


async def test_a_full_disk_refuses_uploads_clearly_and_the_server_goes_on(
        hclient: SlotServerClient) -> None:
    await hclient.exec(0, "head -c 200000000 /dev/zero > big", timeout=TIMEOUT_CAP)
    with pytest.raises(SandboxError, match="disk is full"):
        await hclient.write_file(0, "more.bin", b"x" * 500_000)
    assert (await hclient.health())["ok"]
    await hclient.write_file(1, "ok.bin", b"x" * 500_000)
    assert len(await hclient.read_file(1, "ok.bin")) == 500_000


async def test_a_reset_disk_is_freed_while_other_slots_commands_run(
        hclient: SlotServerClient, hserver: RunningServer) -> None:
    """Every sandbox holds a copy of the server's mount table, so an old disk's filesystem
    outlives its reset while some command that started before runs; its host blocks must
    not (else one long command lets resets pile up old disks on the host)."""
    junk = 48 << 20
    secs = f"30.{uuid.uuid4().int % 10**6}"
    long = asyncio.ensure_future(hclient.exec(0, f"sleep {secs}; echo slept",
                                              timeout=TIMEOUT_CAP))
    assert await asyncio.to_thread(wait_until, lambda: bool(_procs_with(f"sleep\0{secs}")))
    r = await hclient.exec(1, f"head -c {junk} /dev/urandom > junk && sync junk && echo ok",
                           timeout=TIMEOUT_CAP)
    assert r.stdout == "ok\n", r
    free = shutil.disk_usage(hserver.data_dir).free  # counts deleted-but-open files too
    await hclient.reset(1)
    # The release runs right after the reset: the junk's blocks go back to the host.
    assert await asyncio.to_thread(
        wait_until, lambda: shutil.disk_usage(hserver.data_dir).free > free + junk // 2)
    assert not long.done()
    await hclient.reset(0)  # ends the sleeper
    assert (await long).exit_code != 0


def test_mounts_never_reach_the_host_and_a_killed_server_leaves_no_loop_device(
        tmp_path) -> None:
    root = str(tmp_path)
    data = os.path.join(root, "data")
    proc, line, _ = launch(root, "--slots", "2", "--isolation", "required",
                           "--disk-mb", "32", "--inodes", "2048")
    try:
        assert line.startswith(READY), proc.stderr.read()
        assert _host_mounts_under(data) == []  # private mount namespace
        assert wait_until(lambda: len([b for b in _loop_backing_files() if data in b]) >= 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until(lambda: not [b for b in _loop_backing_files() if data in b]), \
            _loop_backing_files()
    finally:
        stop(proc)
    # A restart on the same data dir clears what the killed server left.
    assert os.listdir(os.path.join(data, "disks"))  # the images a SIGKILL leaves behind
    marker = os.path.join(data, "disks", "left-by-the-killed-server")
    open(marker, "w").close()
    proc, line, _ = launch(root, "--slots", "1", "--isolation", "required",
                           "--disk-mb", "32", "--inodes", "2048")
    try:
        assert line.startswith(READY), proc.stderr.read()
        assert not os.path.exists(marker)
        assert _host_mounts_under(data) == []
    finally:
        stop(proc)
    assert not [b for b in _loop_backing_files() if data in b]
    assert not os.path.exists(os.path.join(data, "disks"))


def test_without_cap_sys_admin_required_refuses_and_auto_warns(tmp_path) -> None:
    drop = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    os.makedirs(tmp_path / "r")
    proc, line, _ = launch(str(tmp_path / "r"), "--isolation", "required", prefix=drop)
    assert proc.wait(30) == 2 and line == ""
    err = proc.stderr.read()
    assert "CAP_SYS_ADMIN" in err and "disk" in err, err
    os.makedirs(tmp_path / "a")
    proc, line, _ = launch(str(tmp_path / "a"), "--isolation", "auto", prefix=drop)
    try:
        assert line.startswith(READY), proc.stderr.read()
    finally:
        stop(proc)
    assert "DISK LIMITS DISABLED" in proc.stderr.read()


# --- signals and privileges ---------------------------------------------------------------


async def test_commands_cannot_signal_or_remount_from_the_slot(
        hclient: SlotServerClient, hserver: RunningServer) -> None:
    pid = hserver.proc.pid
    r = await hclient.exec(0, f"kill -9 {pid}; kill -9 -1; echo k=$?; "
                              "mount -t tmpfs none /workspace 2>&1; echo m=$?; "
                              "umount /workspace 2>&1; echo u=$?; mknod dev c 1 3 2>&1; "
                              "echo n=$?", timeout=TIMEOUT_CAP)
    assert hserver.proc.poll() is None
    for tag in ("m=0", "u=0", "n=0"):
        assert tag not in r.stdout, r
    assert (await hclient.health())["ok"]


# --- request validation -------------------------------------------------------------------


def _post(server: RunningServer, path: str, data: bytes | str) -> requests.Response:
    return requests.post(server.url + path, data=data, timeout=60,
                         headers={"Authorization": f"Bearer {server.token}",
                                  "Content-Type": "application/json"})


@pytest.mark.parametrize("timeout, words", [
    ("NaN", ["timeout", "finite"]),
    ("Infinity", ["timeout", "finite"]),
    ("-Infinity", ["timeout", "finite"]),
    ("-1", ["timeout", "greater than 0"]),
    ("0", ["timeout", "greater than 0"]),
    ("1e12", ["timeout", "exec_timeout_cap"]),
    ("1e999", ["timeout", "finite"]),
    ('"10"', ["timeout", "number"]),
    ("true", ["timeout", "number"]),
])
def test_bad_timeouts_are_4xx_with_a_message(hserver: RunningServer, timeout: str,
                                             words: list[str]) -> None:
    r = _post(hserver, "/slots/0/exec", '{"command": "echo ran", "timeout": %s}' % timeout)
    assert r.status_code == 400, r.text
    assert all(w in r.json()["error"] for w in words), r.text


def test_a_huge_command_is_a_413_naming_the_limit(hserver: RunningServer) -> None:
    r = _post(hserver, "/slots/0/exec", json.dumps({"command": "x" * (10 << 20)}))
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["error"]
    just_over = json.dumps({"command": ": " + "x" * (128 * 1024)})
    r = _post(hserver, "/slots/0/exec", just_over)
    assert r.status_code == 413 and "command_cap" in r.json()["error"], r.text
    at_cap = ": " + "x" * (128 * 1024 - 1 - len(": ; echo ran")) + "; echo ran"
    assert len(at_cap) == 128 * 1024 - 1  # the default command_cap: still runs
    r = _post(hserver, "/slots/0/exec", json.dumps({"command": at_cap}))
    assert r.status_code == 200 and r.json()["stdout"] == "ran\n", r.text


@pytest.mark.parametrize("body, status, words", [
    ("not json", 400, ["JSON"]),
    ("[1, 2]", 400, ["object"]),
    ("[" * 100_000 + "]" * 100_000, 400, ["JSON"]),
    ('{"command": 5}', 400, ["command"]),
    ('{"command": "true", "bogus": 1}', 400, ["bogus"]),
    ('{"command": "a\\u0000b"}', 400, ["NUL"]),
    ('{"command": "true", "env": {"A B": "x"}}', 400, ["env"]),
    ('{"command": "true", "env": {"A": 1}}', 400, ["env"]),
    ('{"command": "true", "cwd": "%s"}' % ("a/" * 3000), 400, ["cwd"]),
    ('{"command": "true", "env": {"A": "%s"}}' % ("x" * 300_000), 413, ["env", "limit"]),
    ("{\"command\": \"\\udc80\"}", 200, []),  # a lone surrogate is a string; it runs
])
def test_malformed_exec_bodies_are_4xx(hserver: RunningServer, body: str, status: int,
                                       words: list[str]) -> None:
    r = _post(hserver, "/slots/0/exec", body)
    assert r.status_code == status, r.text
    if status != 200:
        assert all(w in r.json()["error"] for w in words), r.text


@pytest.mark.parametrize("query, words", [
    ("path=x&max_bytes=NaN", ["max_bytes"]),
    ("path=x&max_bytes=-1", ["max_bytes"]),
    ("path=x&max_bytes=1e3", ["max_bytes"]),
    ("path=x&encoding=rot13", ["encoding"]),
    ("path=x&path=y", ["more than once"]),
    ("path=" + "a" * 5000, ["path"]),
    ("path=x&surprise=1", ["surprise"]),
])
def test_malformed_file_queries_are_400(hserver: RunningServer, query: str,
                                        words: list[str]) -> None:
    r = requests.get(f"{hserver.url}/slots/0/file?{query}", timeout=30,
                     headers={"Authorization": f"Bearer {hserver.token}"})
    assert r.status_code == 400, r.text
    assert all(w in r.json()["error"] for w in words), r.text


def test_oversized_file_bodies_are_413(hserver: RunningServer) -> None:
    r = requests.put(f"{hserver.url}/slots/0/file?path=big", data=b"x" * (2 << 20), timeout=30,
                     headers={"Authorization": f"Bearer {hserver.token}"})
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
_exec_fields = st.fixed_dictionaries({}, optional={
    "command": st.text(max_size=40) | _json,
    "timeout": st.floats(allow_nan=True, allow_infinity=True).map(lambda t: t if not 4 < t < 1e6 else t % 4) | _json,
    "cwd": st.sampled_from([".", "..", "/etc", "a\x00b", "sub", "/workspace"]) | _json,
    "env": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3) | _json,
    "slot": st.integers(-2, 3) | _json,
})
_bodies = _exec_fields | _json


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_bodies, path=st.sampled_from(["/slots/0/exec", "/slots/1/exec", "/slots/9/exec",
                                           "/slots/x/exec"]))
def test_fuzzed_exec_bodies_never_yield_a_5xx(hserver: RunningServer, body, path: str) -> None:
    r = _post(hserver, path, json.dumps(body, allow_nan=True))
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.status_code == 200 or "error" in r.json()


_query_values = st.text(max_size=20) | st.sampled_from(
    ["", ".", "..", "/", "NaN", "-1", "1e9", "99999999999999999999999", "raw", "text", "base64"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(params=st.dictionaries(st.sampled_from(["path", "max_bytes", "encoding", "x"]),
                              _query_values, max_size=3),
       method_path=st.sampled_from([("GET", "file"), ("PUT", "file"), ("GET", "list"),
                                    ("GET", "archive"), ("POST", "upload")]),
       body=st.binary(max_size=64))
def test_fuzzed_file_requests_never_yield_a_5xx(hserver: RunningServer, params, method_path,
                                                body: bytes) -> None:
    method, what = method_path
    r = requests.request(method, f"{hserver.url}/slots/1/{what}", params=params,
                         data=body if method != "GET" else None, timeout=30,
                         headers={"Authorization": f"Bearer {hserver.token}"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
