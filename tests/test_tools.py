import pytest

from rollout.agent.loop import AgentConfig
from rollout.agent.tools import (PERSISTENT_TERMINAL, TOOL_SCHEMAS, SandboxTools, ToolLimits,
                           describe_tools, truncate_middle)
from rollout.types import SandboxError, ToolCall
from tests.agent_support import DirSandbox


@pytest.fixture
def sandbox(tmp_path):
    return DirSandbox(tmp_path / "ws")


def tools_for(sandbox, **limits):
    return SandboxTools(sandbox, ToolLimits(**limits))


async def test_terminal_reports_output_and_exit_code(sandbox):
    res = await tools_for(sandbox).run(ToolCall("terminal", {"command": "echo out; echo err >&2; exit 3"}, "c1"))
    assert not res.is_error and res.call_id == "c1"
    assert "out\n" in res.content and "err\n" in res.content
    assert res.content.endswith("[exit code: 3]")


async def test_terminal_timeout_is_clamped_to_the_configured_range(sandbox):
    tools = tools_for(sandbox, timeout_default=5, timeout_min=0.5, timeout_max=2)
    await tools.run(ToolCall("terminal", {"command": "true", "timeout": 9999}))
    await tools.run(ToolCall("terminal", {"command": "true", "timeout": 0.01}))
    await tools.run(ToolCall("terminal", {"command": "true"}))
    await tools.run(ToolCall("terminal", {"command": "true", "timeout": 1.5}), max_timeout=0.8)
    assert sandbox.exec_timeouts == [2, 0.5, 2, 0.8]


async def test_terminal_timeout_is_an_observation(sandbox):
    res = await tools_for(sandbox, timeout_min=0.2).run(
        ToolCall("terminal", {"command": "sleep 30", "timeout": 0.3}))
    assert not res.is_error and "timed out after 0.3s" in res.content


async def test_long_output_is_truncated_with_a_marker(sandbox):
    res = await tools_for(sandbox, max_observation_chars=2000).run(
        ToolCall("terminal", {"command": "seq 1 100000"}))
    assert len(res.content) <= 2000
    assert res.content.startswith("1\n2\n") and "characters truncated" in res.content
    assert res.content.rstrip().endswith("[exit code: 0]")


async def test_write_then_read_with_line_range(sandbox):
    tools = tools_for(sandbox)
    res = await tools.run(ToolCall("write_file", {"path": "pkg/mod.py", "content": "a\nb\nc\nd\n"}))
    assert "Wrote 8 bytes" in res.content
    res = await tools.run(ToolCall("read_file", {"path": "./pkg/../pkg/mod.py", "start_line": 2, "end_line": 3}))
    assert res.content == "b\nc\n"
    res = await tools.run(ToolCall("read_file", {"path": "pkg/mod.py", "start_line": 9}))
    assert res.is_error and "has 4 lines" in res.content


async def test_paths_outside_the_workspace_are_refused_with_a_clear_error(sandbox):
    tools = tools_for(sandbox, workspace_root="/testbed")
    for path in ["/etc/passwd", "../x", "a/../../x", ""]:
        res = await tools.run(ToolCall("read_file", {"path": path}))
        assert res.is_error and ("workspace" in res.content or "non-empty" in res.content), path
    await tools.run(ToolCall("write_file", {"path": "/testbed/ok.txt", "content": "hi"}))
    assert (sandbox.root / "ok.txt").read_text() == "hi"


async def test_bad_arguments_become_error_observations(sandbox):
    tools = tools_for(sandbox)
    cases = [
        (ToolCall("terminal", {}), "Missing required argument 'command'"),
        (ToolCall("terminal", {"command": ["ls"]}), "must be a str, got list"),
        (ToolCall("terminal", {"command": "ls", "timeout": "fast"}), "must be a int or float"),
        (ToolCall("write_file", {"path": "a", "content": None}), "must be a str"),
        (ToolCall("read_file", {"path": "missing.txt"}), "FileNotFoundError"),
        (ToolCall("nope", {}), "Unknown tool 'nope'"),
    ]
    for call, expected in cases:
        res = await tools.run(call)
        assert res.is_error and expected in res.content, (call, res.content)


async def test_sandbox_errors_propagate(sandbox):
    sandbox.die_after = 0
    with pytest.raises(SandboxError):
        await tools_for(sandbox).run(ToolCall("terminal", {"command": "true"}))


def test_truncate_middle_keeps_head_and_tail():
    text = "H" * 500 + "M" * 10_000 + "T" * 500
    out = truncate_middle(text, 1000)
    assert out.startswith("H" * 400) and out.endswith("T" * 400) and len(out) <= 1000
    assert truncate_middle("short", 1000) == "short"


def test_the_model_is_told_which_terminal_it_has() -> None:
    assert describe_tools(TOOL_SCHEMAS, ToolLimits()) is TOOL_SCHEMAS
    told = describe_tools(TOOL_SCHEMAS, ToolLimits(persistent_shell=True))
    desc = {s["function"]["name"]: s["function"]["description"] for s in told}
    assert desc["terminal"] == PERSISTENT_TERMINAL
    assert "no state carries over" in TOOL_SCHEMAS[0]["function"]["description"]  # untouched
    assert [s["function"]["name"] for s in told] == [s["function"]["name"] for s in TOOL_SCHEMAS]


def test_the_config_key_reaches_the_tools() -> None:
    assert AgentConfig().tool_limits.persistent_shell is False
    assert AgentConfig(persistent_shell=True).tool_limits.persistent_shell is True
