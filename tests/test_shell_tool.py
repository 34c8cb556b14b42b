"""The terminal as one shell session per trajectory (`agent.persistent_shell`), in a real
slot: a LocalBackend slot server running each call under bubblewrap with its limits."""

from __future__ import annotations

import pytest
import pytest_asyncio

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.sandbox.slot_sandbox import SlotSandbox
from rollout.agent.shell_state import NOT_KEPT
from rollout.agent.tools import SandboxTools, ToolLimits
from rollout.types import ToolCall

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=2),
                             SlotLimits(isolation="bwrap", output_cap=64 * 1024))
    await p.start()
    yield p
    await p.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox(pool):
    slot = await pool.acquire("shell-test")
    yield SlotSandbox(pool, slot)
    await pool.release(slot)


def shell(sandbox, persistent: bool = True, **limits) -> SandboxTools:
    return SandboxTools(sandbox, ToolLimits(persistent_shell=persistent, **limits))


async def run(tools: SandboxTools, command: str, **args) -> str:
    res = await tools.run(ToolCall("terminal", {"command": command, **args}))
    assert not res.is_error, res.content
    return res.content


async def test_directory_and_exported_variables_carry_over(sandbox) -> None:
    t = shell(sandbox)
    out = await run(t, "mkdir -p pkg/sub && cd pkg && export GREETING='hello  there' && "
                       "LOCAL=1 && echo to-stderr >&2")
    assert out == "to-stderr\n[exit code: 0]"  # the command's stderr is shown, nothing else
    out = await run(t, 'pwd; echo "$GREETING"; echo "local=${LOCAL:-unset}"')
    assert out.splitlines()[:3] == ["/workspace/pkg", "hello  there", "local=unset"]
    assert await run(t, "cd sub; exit 3") == "[exit code: 3]"  # the exit status stands
    assert (await run(t, "pwd")).splitlines()[0] == "/workspace/pkg/sub"
    # Another trajectory's terminal in the same slot starts fresh, as does the default one.
    assert (await run(shell(sandbox), "pwd")).splitlines()[0] == "/workspace"
    assert (await run(shell(sandbox, persistent=False), "pwd")).splitlines()[0] == "/workspace"


async def test_a_stateless_terminal_forgets_cd(sandbox) -> None:
    t = shell(sandbox, persistent=False)
    await run(t, "mkdir -p a && cd a && export X=1")
    assert (await run(t, 'pwd; echo "x=${X:-unset}"')).splitlines()[:2] == ["/workspace", "x=unset"]


async def test_a_killed_call_keeps_the_state_from_before_it_and_says_so(sandbox) -> None:
    t = shell(sandbox, timeout_min=0.2)
    await run(t, "mkdir -p kept && cd kept && export PHASE=before")
    out = await run(t, "cd / && export PHASE=during && sleep 30", timeout=0.5)
    assert "timed out" in out and NOT_KEPT in out
    assert (await run(t, 'pwd; echo "$PHASE"')).splitlines()[:2] == ["/workspace/kept", "before"]


async def test_long_output_does_not_lose_the_state(sandbox) -> None:
    t = shell(sandbox)
    out = await run(t, "mkdir -p big && cd big && seq 1 200000 && seq 1 200000 >&2")
    assert "[output truncated by the sandbox]" in out and NOT_KEPT not in out
    assert (await run(t, "pwd")).splitlines()[0] == "/workspace/big"


async def test_a_vanished_directory_is_said_and_the_call_runs_in_the_workspace(sandbox) -> None:
    t = shell(sandbox)
    await run(t, "mkdir -p gone && cd gone")
    await run(t, "rmdir ../gone")
    out = await run(t, "pwd")
    assert "/workspace/gone no longer exists" in out and out.splitlines()[1] == "/workspace"


async def test_closing_the_state_channel_keeps_the_old_state_and_the_exit_status(sandbox) -> None:
    t = shell(sandbox)
    await run(t, "mkdir -p chan && cd chan")
    out = await run(t, "cd / ; exec 9>&- ; exit 4")
    assert out.endswith(f"{NOT_KEPT}\n[exit code: 4]")
    assert (await run(t, "pwd")).splitlines()[0] == "/workspace/chan"
