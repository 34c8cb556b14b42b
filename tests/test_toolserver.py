"""The external tool server: a real aiohttp server in-process (its `python -m` process and
launch's wiring are proven by tests/observe/test_terminal_recording.py), reached through
the agent's routing executor (rollout/agent/toolbox.py) exactly as a trajectory reaches it."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rollout.tasks.base import NoSlot
from rollout.agent.toolbox import Toolbox, with_extra_tools
from rollout.agent.tools import TOOL_SCHEMAS, SandboxTools, describe_tools
from rollout.toolserver import ExternalTool, register
from rollout.toolserver.server import ToolServer
from rollout.types import SandboxError, ToolCall, ToolLimits
from tests.launch_config import compose_config


@register
class Sleepy(ExternalTool):
    """A plug-in for the test: sleeps, and counts how many of it run at once."""

    name = "sleepy"
    description = "Sleep."
    parameters = {"type": "object", "properties": {"seconds": {"type": "number"}}}
    running = peak = 0

    async def run(self, arguments: dict[str, Any]) -> str:
        Sleepy.running += 1
        Sleepy.peak = max(Sleepy.peak, Sleepy.running)
        try:
            await asyncio.sleep(float(arguments.get("seconds", 0)))
        finally:
            Sleepy.running -= 1
        return "slept"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def upstream():
    """A web service that needs the secret and echoes the Authorization header it got (the
    worst case: the tool server must still keep the secret out of the observation)."""
    secret = secrets.token_hex(16)

    async def page(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "")
        return web.Response(text=f"authorized={got == f'Bearer {secret}'} header={got}\n" + "x" * 5000)

    app = web.Application()
    app.router.add_get("/page", page)
    runner, url = await serve(app)
    yield secret, url
    await runner.cleanup()


@pytest.fixture
async def server(upstream, monkeypatch):
    secret, url = upstream
    hostport = url.removeprefix("http://")
    token = secrets.token_hex(16)
    config = {"concurrency": 1, "tools": {
        "http_fetch": {"allow_hosts": [hostport], "auth": {hostport: "FETCH_SECRET"},
                       "max_bytes": 1000},
        "calculator": {}, "sleepy": {"timeout": 0.5}}}
    ts = ToolServer(config, token, environ={"FETCH_SECRET": secret})
    runner, base = await serve(ts.app())
    monkeypatch.setenv("TEST_TOOL_TOKEN", token)
    yield base, token, secret, url
    await runner.cleanup()


def toolbox(base: str | None) -> Toolbox:
    sandbox = NoSlot()
    schemas = with_extra_tools(list(TOOL_SCHEMAS), ["calculator", "http_fetch", "sleepy"])
    return Toolbox(SandboxTools(sandbox), sandbox, ToolLimits(), schemas, server_url=base,
                   token_env="TEST_TOOL_TOKEN")


async def test_the_server_refuses_calls_without_its_token(server):
    base, token, _, _ = server
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as r:
            assert r.status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            async with http.post(f"{base}/call", json={"name": "calculator", "arguments":
                                                       {"expression": "1+1"}}, headers=headers) as r:
                assert r.status == 401 and "token" in (await r.json())["error"]
            async with http.get(f"{base}/tools", headers=headers) as r:
                assert r.status == 401
        async with http.get(f"{base}/tools", headers={"Authorization": f"Bearer {token}"}) as r:
            names = [t["function"]["name"] for t in (await r.json())["tools"]]
            assert sorted(names) == ["calculator", "http_fetch", "sleepy"]


async def test_calls_are_routed_by_schema_and_the_secret_never_comes_back(server):
    base, _, secret, url = server
    tools = toolbox(base)
    try:
        calc = await tools.run(ToolCall("calculator", {"expression": "2**10 + sqrt(16)"}, "c1"))
        assert (calc.content, calc.is_error) == ("1028.0", False)
        # the same name run locally would be unknown: it was the server that answered
        assert (await SandboxTools(NoSlot()).run(ToolCall("calculator", {}, "c"))).is_error
        fetched = await tools.run(ToolCall("http_fetch", {"url": f"{url}/page"}, "c2"))
        assert not fetched.is_error and "authorized=True" in fetched.content
        assert secret not in fetched.content and "[secret removed]" in fetched.content
        assert "[body cut at 1000 bytes]" in fetched.content
        refused = await tools.run(ToolCall("http_fetch", {"url": "http://example.org/x"}, "c3"))
        assert refused.is_error and refused.content.startswith(
            "Error: Refused: host example.org is not on the allow-list")
        bad = await tools.run(ToolCall("calculator", {"expression": "__import__('os')"}, "c4"))
        assert bad.is_error and "not allowed" in bad.content
        local = await tools.run(ToolCall("write_file", {"path": "a", "content": "b"}, "c5"))
        assert local.content == "Wrote 1 bytes to a."  # the slot's tools stay local
    finally:
        await tools.close()


async def test_concurrency_limit_and_per_tool_timeout(server):
    base = server[0]
    tools = [toolbox(base) for _ in range(3)]
    Sleepy.peak = 0
    try:
        results = await asyncio.gather(*(t.run(ToolCall("sleepy", {"seconds": 0.05}, f"s{i}"))
                                         for i, t in enumerate(tools)))
        assert [r.content for r in results] == ["slept"] * 3 and Sleepy.peak == 1
        slow = await tools[0].run(ToolCall("sleepy", {"seconds": 30}, "slow"))
        assert slow.is_error and slow.content == "Error: sleepy timed out after 0.5s"
    finally:
        for t in tools:
            await t.close()


async def test_an_unreachable_server_is_an_infrastructure_failure():
    tools = toolbox("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        with pytest.raises(SandboxError, match="tool server unreachable"):
            await tools.run(ToolCall("calculator", {"expression": "1"}, "c"))
    finally:
        await tools.close()


def test_the_model_sees_no_routing_mark_and_config_is_checked(tmp_path):
    schemas = with_extra_tools(list(TOOL_SCHEMAS), ["tmux", "calculator"])
    shown = describe_tools(schemas, ToolLimits())
    assert [s["function"]["name"] for s in shown][-2:] == ["tmux", "calculator"]
    assert all("external" not in s for s in shown) and schemas[-1]["external"] is True
    from rollout.config_model import ConfigError

    with pytest.raises(ConfigError, match="tool_server.launch=true"):
        compose_config(["conf=terminal", f"run.dir={tmp_path}", "agent.tools=[calculator]"])
    with pytest.raises(ConfigError, match="unknown tool 'nope'"):
        compose_config(["conf=terminal", f"run.dir={tmp_path}", "agent.tools=[nope]"])
    cfg = compose_config(["conf=terminal", f"run.dir={tmp_path}", "agent.tools=[tmux,calculator]",
                          "tool_server.launch=true",
                          "tool_server.tools={http_fetch:{allow_hosts:[example.org]}}"])
    assert cfg.agent.tools == ["tmux", "calculator"] and cfg.tool_server.tools["http_fetch"]
