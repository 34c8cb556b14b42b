"""Acceptance: bearer-token auth on every endpoint; startup refusals are clear."""

from __future__ import annotations

import os
import tempfile

import aiohttp
import pytest

from tests.sandbox_image.conftest import READY, RunningServer, launch, stop

ENDPOINTS = [
    ("GET", "/health"),
    ("POST", "/slots/0/exec"),
    ("POST", "/slots/0/reset"),
    ("GET", "/slots/0/file?path=x"),
    ("PUT", "/slots/0/file?path=x"),
    ("GET", "/slots/0/list"),
    ("GET", "/slots/0/archive"),
    ("POST", "/slots/0/upload"),
]


async def test_missing_or_wrong_token_is_refused(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as s:
        for method, path in ENDPOINTS:
            async with s.request(method, server.url + path, json={"command": "touch pwned"}) as r:
                assert r.status == 401, (method, path)
            bad = {"Authorization": "Bearer " + "x" * len(server.token)}
            async with s.request(method, server.url + path, headers=bad,
                                 json={"command": "touch pwned"}) as r:
                assert r.status == 403, (method, path)
        async with s.get(server.url + "/livez") as r:
            assert r.status == 200
        good = {"Authorization": f"Bearer {server.token}"}
        async with s.get(server.url + "/slots/0/list", headers=good) as r:
            assert r.status == 200
            assert all(e["name"] != "pwned" for e in (await r.json())["entries"])


def test_server_refuses_to_start_without_a_token() -> None:
    with tempfile.TemporaryDirectory() as root:
        proc, line, _ = launch(root, token="")
        assert proc.wait(30) == 2
        assert "token" in proc.stderr.read()


def test_required_isolation_refuses_without_bubblewrap() -> None:
    with tempfile.TemporaryDirectory() as root:
        proc, line, _ = launch(root, "--isolation", "required", "--bwrap", "/nonexistent/bwrap")
        assert proc.wait(30) != 0
        assert line == ""
        err = proc.stderr.read()
        assert "bubblewrap" in err and "unusable" in err


def test_auto_isolation_falls_back_loudly_and_none_is_explicit() -> None:
    for flags in (["--isolation", "auto", "--bwrap", "/nonexistent/bwrap"],
                  ["--isolation", "none"]):
        with tempfile.TemporaryDirectory() as root:
            proc, line, _ = launch(root, *flags)
            try:
                assert line.startswith(READY)
                assert '"isolation": "none"' in line
            finally:
                stop(proc)
            assert "ISOLATION DISABLED" in proc.stderr.read()


@pytest.mark.parametrize("flag", ["--slots=0", "--env=NOEQUALS", "--workspace=relative"])
def test_bad_flags_exit_with_a_message(flag: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        proc, _, _ = launch(root, flag)
        assert proc.wait(30) == 2
        assert "slot server:" in proc.stderr.read()
    assert not os.path.exists(os.path.join(root, "data"))


async def test_unisolated_mode_runs_in_the_slot_dir_and_kills_on_timeout(tmp_path) -> None:
    """--isolation none takes the other spawn path (cwd on the host, setpriv or preexec)."""
    import json
    import uuid

    from rollout.sandbox.client import SlotServerClient
    from tests.sandbox_image.conftest import wait_until
    from tests.sandbox_image.test_limits import _procs_with

    proc, line, token = launch(str(tmp_path), "--slots", "1", "--isolation", "none")
    try:
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, json.loads(line[len(READY):])["url"], token)
            await client.write_file(0, "sub/f.txt", b"x")
            r = await client.exec(0, "pwd; ls; echo err >&2", cwd="sub")
            # The workspace is a directory of the slot's disk under the data dir.
            assert r.ok and r.stderr == "err\n", r
            assert r.stdout.startswith(f"{tmp_path}/data/") and r.stdout.endswith("/sub\nf.txt\n")
            secs = f"1000.{uuid.uuid4().int % 10**6}"
            r = await client.exec(0, f"sleep {secs} & sleep {secs}", timeout=1)
            assert r.timed_out
            assert wait_until(lambda: not _procs_with(f"sleep\0{secs}"))
    finally:
        stop(proc)
