"""The slot's stateful Python session (`POST /slots/{i}/python`) on a real slot server.

State carries over between calls; the session is killed by reset and by its timeout; a
crash is an observation and the next call gets a fresh session; hostile code (fork bomb,
memory hog, infinite loop, os._exit) exhausts only its own slot.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rollout.sandbox.client import SlotRequestError, SlotServerClient
from tests.sandbox_image.conftest import RunningServer, wait_until
from tests.sandbox_image.test_limits import _healthy_neighbour, _procs_with


async def test_state_output_result_and_errors(client: SlotServerClient) -> None:
    r = await client.python(0, "import os\nx = 41\nprint('hi')\n"
                               "os.system('echo from-child; echo oops >&2')\nx + 1")
    assert (r.stdout, r.stderr, r.result, r.error) == ("hi\nfrom-child\n", "oops\n", "42", None)
    r = await client.python(0, "x += 1\nx")
    assert r.result == "42" and r.stdout == "" and not r.session_lost
    r = await client.python(0, "def f():\n    return 1 / 0\nf()")
    assert r.error is not None and "ZeroDivisionError" in r.error and "<python>" in r.error
    assert "python_driver" not in r.error and "<string>" not in r.error  # only the model's frames
    r = await client.python(0, "raise SystemExit(3)")
    assert "SystemExit" in (r.error or "") and not r.session_lost
    assert (await client.python(0, "x")).result == "42"  # neither error ended the session
    # Sessions of two slots are separate; each runs in its own workspace.
    assert (await client.python(1, "'x' in globals()")).result == "False"
    await client.write_file(1, "mod.py", b"VALUE = 7\n")
    assert (await client.python(1, "import mod; mod.VALUE")).result == "7"


async def test_reset_kills_the_session_and_its_children(client: SlotServerClient) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    r = await client.python(2, f"import subprocess\nkept = 5\n"
                               f"p = subprocess.Popen(['sleep', '{marker}'])")
    assert r.error is None, r.error
    # Popen returns once the child forked; it runs `sleep` a moment later.
    assert wait_until(lambda: _procs_with(f"sleep\0{marker}"))
    assert (await client.health())["python_sessions"] >= 1
    await client.reset(2)
    assert wait_until(lambda: not _procs_with(f"sleep\0{marker}")), _procs_with(marker)
    r = await client.python(2, "'kept' in globals()")
    assert r.result == "False" and not r.session_lost


async def test_timeout_kills_the_session_then_a_fresh_one_starts(client: SlotServerClient) -> None:
    await client.python(0, "state = 1")
    r = await client.python(0, "while True:\n    pass", timeout=1)
    assert r.timed_out and r.session_lost and "timed out after 1s" in r.message
    r = await client.python(0, "'state' in globals()")
    assert r.result == "False" and not r.timed_out


async def test_os_exit_is_a_clear_error_and_the_next_call_restarts(client: SlotServerClient) -> None:
    await client.python(1, "state = 1")
    r = await client.python(1, "import os\nos._exit(3)")
    assert r.session_lost and "exited with code 3" in r.message and "state is lost" in r.message
    assert (await client.python(1, "1 + 1")).result == "2"


async def test_memory_hog_is_contained(client: SlotServerClient) -> None:
    hog = client.python(1, "b = bytearray(1 << 30)", timeout=60)
    r, _ = await asyncio.gather(hog, _healthy_neighbour(client))
    assert r.session_lost and "memory limit" in r.message
    assert (await client.health())["ok"]
    assert (await client.python(1, "2 * 21")).result == "42"


async def test_fork_bomb_is_contained(client: SlotServerClient) -> None:
    bomb = ("import os, time\nfor _ in range(10000):\n    try:\n        os.fork()\n"
            "    except OSError:\n        break\ntime.sleep(30)")
    r, _ = await asyncio.gather(client.python(2, bomb, timeout=3), _healthy_neighbour(client))
    assert r.timed_out or r.session_lost or r.error  # whatever became of it, it was contained
    assert (await client.health())["ok"]
    await _healthy_neighbour(client)
    await client.reset(2)
    assert (await client.python(2, "'fresh'")).result == "'fresh'"


async def test_bad_requests_are_refused(client: SlotServerClient, server: RunningServer) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/slots/0/python", json={"code": 5},
                                headers={"Authorization": f"Bearer {server.token}"}) as resp:
            assert resp.status == 400 and "code" in (await resp.json())["error"]
    with pytest.raises(SlotRequestError, match="exec_timeout_cap"):
        await client.python(0, "1", timeout=10**6)
