"""The agent loop ends with the right named outcome for each limit and failure.

Policies are the real scripted/completions clients with the real Qwen3 tokenizer; the slot is
`DirSandbox` (real shell commands in a temp dir).
"""

import json

import pytest

from rollout.agent.loop import AgentConfig, run_agent
from rollout.policy import PolicyConfig, make_policy
from rollout.agent.tools import TOOL_SCHEMAS, SandboxTools
from rollout.types import INFRA_OUTCOMES, Outcome, Task
from tests.agent_support import QWEN_TOKENIZER, DirSandbox
from tests.policy.fake_servers import FakeModelServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}]
TASK = Task("t-agent", "test", "go")


def tc(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


async def run_scripted(responses, sandbox, cfg, **kw):
    policy = make_policy(PolicyConfig(type="scripted", tokenizer=QWEN_TOKENIZER, responses=responses))
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
    return await run_agent(conv, sandbox, cfg, trajectory_id="tr", task_id=TASK.task_id, **kw)


def tool_messages(traj):
    return [m["content"] for m in traj.record.messages if m["role"] == "tool"]


def assert_consistent(traj):
    rec = traj.record
    assert len(rec.tokens) == len(rec.masks) == len(rec.logprobs)
    assert all(m in (-100, t) for t, m in zip(rec.tokens, rec.masks))


async def test_done_when_a_turn_has_no_tool_call(tmp_path):
    traj = await run_scripted(["Looking.\n" + tc("terminal", command="echo hi"), "Done."],
                              DirSandbox(tmp_path), AgentConfig())
    assert traj.outcome == Outcome.DONE and traj.turns == 2 and traj.error is None
    assert tool_messages(traj) == ["hi\n[exit code: 0]"]
    assert traj.metadata["tool_calls"] == 1 and traj.tool_time > 0 and traj.llm_time > 0
    assert not traj.record.logprobs_available
    assert_consistent(traj)


async def test_max_turns_runs_the_last_turns_calls_then_stops(tmp_path):
    responses = [tc("terminal", command=f"echo {i} >> log") for i in range(5)]
    sandbox = DirSandbox(tmp_path)
    traj = await run_scripted(responses, sandbox, AgentConfig(max_turns=3))
    assert traj.outcome == Outcome.MAX_TURNS and traj.turns == 3
    assert (sandbox.root / "log").read_text() == "0\n1\n2\n"
    assert_consistent(traj)


async def test_context_full_when_the_token_budget_is_reached(tmp_path):
    long_turn = "word " * 400 + tc("terminal", command="true")
    policy = make_policy(PolicyConfig(type="scripted", tokenizer=QWEN_TOKENIZER, responses=[long_turn] * 3))
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
    cfg = AgentConfig(max_context_tokens=conv.num_tokens + 100)
    traj = await run_agent(conv, DirSandbox(tmp_path), cfg, trajectory_id="tr", task_id="t")
    assert traj.outcome == Outcome.CONTEXT_FULL and traj.turns == 1
    # the turn was cut at the budget, before its call: nothing ran
    assert len(traj.record.tokens) == cfg.max_context_tokens and tool_messages(traj) == []
    assert_consistent(traj)


async def test_wall_clock_budget_ends_in_timeout(tmp_path):
    cfg = AgentConfig(wall_clock_budget=1.0, tool_timeout_min=0.1)
    traj = await run_scripted([tc("terminal", command="sleep 30", timeout=60), "Done."],
                              DirSandbox(tmp_path), cfg)
    assert traj.outcome == Outcome.TIMEOUT and "budget" in traj.error
    assert traj.turns == 1 and traj.tool_time < 30


async def _run_against_a_stalling_server(tmp_path, cfg: AgentConfig):
    """One trajectory against a model server that answers after 30 s; (conversation,
    trajectory)."""
    from rollout.policy.template import load_tokenizer

    server = FakeModelServer(load_tokenizer(QWEN_TOKENIZER))
    await server.start()
    server.delay = 30
    policy = make_policy(PolicyConfig(base_url=server.url, tokenizer=QWEN_TOKENIZER))
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        traj = await run_agent(conv, DirSandbox(tmp_path), cfg, trajectory_id="tr",
                               task_id="t")
    finally:
        await policy.close()
        await server.stop()
    return conv, traj


async def test_a_slow_llm_call_is_a_policy_error_not_a_timeout(tmp_path):
    """One call past llm_timeout is the server's failure (an infrastructure outcome, retried),
    not the trajectory running out of its own budget."""
    conv, traj = await _run_against_a_stalling_server(tmp_path, AgentConfig(llm_timeout=0.3))
    assert traj.outcome == Outcome.POLICY_ERROR and traj.outcome in INFRA_OUTCOMES
    assert traj.error.startswith("policy timeout") and "llm_timeout" in traj.error
    assert traj.turns == 0 and traj.record.tokens == conv.token_ids()


async def test_the_budget_running_out_during_an_llm_call_is_the_agents_timeout(tmp_path):
    """The wall-clock budget is the trajectory's own: when it, not llm_timeout, cuts a call
    short, the outcome is `timeout` (graded as it stands), not an infrastructure failure."""
    _, traj = await _run_against_a_stalling_server(
        tmp_path, AgentConfig(wall_clock_budget=0.3, llm_timeout=300))
    assert traj.outcome == Outcome.TIMEOUT and "wall-clock budget" in traj.error
    assert traj.outcome not in INFRA_OUTCOMES


async def test_policy_error_mid_trajectory_is_recorded_not_raised(tmp_path):
    # the scripted policy has one response; asking for a second is a policy failure
    traj = await run_scripted([tc("terminal", command="echo one")], DirSandbox(tmp_path), AgentConfig())
    assert traj.outcome == Outcome.POLICY_ERROR and "no response for turn 2" in traj.error
    assert traj.turns == 1 and tool_messages(traj) == ["one\n[exit code: 0]"]
    assert_consistent(traj)


async def test_unreachable_policy_server_is_a_policy_error(tmp_path, unused_tcp_port):
    policy = make_policy(PolicyConfig(base_url=f"http://127.0.0.1:{unused_tcp_port}",
                                      tokenizer=QWEN_TOKENIZER, max_retries=1))
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
    try:
        traj = await run_agent(conv, DirSandbox(tmp_path), AgentConfig(), trajectory_id="tr", task_id="t")
    finally:
        await policy.close()
    assert traj.outcome == Outcome.POLICY_ERROR and "after 2 attempts" in traj.error


async def test_sandbox_error_mid_trajectory_is_recorded_not_raised(tmp_path):
    sandbox = DirSandbox(tmp_path, die_after=1)
    responses = [tc("terminal", command="echo a"), tc("terminal", command="echo b"), "Done."]
    traj = await run_scripted(responses, sandbox, AgentConfig())
    assert traj.outcome == Outcome.SANDBOX_ERROR and "host died" in traj.error
    assert traj.turns == 2 and tool_messages(traj) == ["a\n[exit code: 0]"]
    assert_consistent(traj)


async def test_malformed_calls_become_observations_and_the_loop_goes_on(tmp_path):
    responses = [
        "<tool_call>{not json</tool_call>",
        tc("delete_everything") + tc("terminal", command=["not", "a", "string"]),
        tc("terminal", command="echo fixed"),
        "Done.",
    ]
    traj = await run_scripted(responses, DirSandbox(tmp_path), AgentConfig())
    assert traj.outcome == Outcome.DONE and traj.turns == 4
    obs = tool_messages(traj)
    assert "not valid JSON" in obs[0]
    assert "Unknown tool 'delete_everything'" in obs[1] and "must be a str" in obs[2]
    assert obs[3] == "fixed\n[exit code: 0]"
    assert traj.metadata["tool_errors"] == 3


async def test_the_tool_executor_is_a_parameter(tmp_path):
    seen = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        async def run(self, call, *, max_timeout=None):
            seen.append(call.name)
            return await self.inner.run(call, max_timeout=max_timeout)

    sandbox = DirSandbox(tmp_path)
    traj = await run_scripted([tc("write_file", path="f.txt", content="x"), "Done."], sandbox,
                              AgentConfig(), tools=Recording(SandboxTools(sandbox)))
    assert traj.outcome == Outcome.DONE and seen == ["write_file"]
    assert (sandbox.root / "f.txt").read_text() == "x"


@pytest.fixture
def unused_tcp_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
