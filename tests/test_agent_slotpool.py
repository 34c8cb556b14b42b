"""The agent loop and a whole rollout over a real SlotPool (LocalBackend: real slot-server
processes with bubblewrap), with the real Qwen3 tokenizer.

- scripted turns exercise the tool path against the real server (files, exit codes, refused
  paths, a missing file) and a host that dies mid-trajectory;
- the gold policy replays a bundled SWE-smith instance's reference solution through
  `run_rollout` with the real SweSmithEnv, which must score it 1.0 in the same slot.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig, run_agent
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.scored import ScoredGroup
from rollout.tasks import TaskSourceConfig, load_tasks
from rollout.tasks.swe_smith import SweSmithEnv
from rollout.agent.tools import PERSISTENT_TERMINAL, TOOL_SCHEMAS
from rollout.types import Outcome, Task
from tests.agent_support import QWEN_TOKENIZER

pytestmark = pytest.mark.asyncio(loop_scope="module")
IMAGE = "rollout-bundled:py311"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=2, slots_per_host=2, default_image=IMAGE),
        SlotLimits(isolation="bwrap"))
    await p.start()
    yield p
    await p.stop()


def tc(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def scripted(responses):
    return make_policy(PolicyConfig(type="scripted", tokenizer=QWEN_TOKENIZER, responses=responses))


MESSAGES = [{"role": "user", "content": "Work in the repo."}]


async def test_tool_path_over_real_slots(pool):
    policy = scripted([
        tc("write_file", path="pkg/hello.py", content="print('hi from the slot')\n"),
        tc("terminal", command="python pkg/hello.py && exit 4"),
        tc("read_file", path="pkg/hello.py") + tc("read_file", path="/etc/passwd")
        + tc("read_file", path="../../outside") + tc("read_file", path="missing.txt"),
        "Done.",
    ])
    async with pool.session("tr-tools", image=IMAGE) as sandbox:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, Task("t", "test", "x"))
        traj = await run_agent(conv, sandbox, AgentConfig(), trajectory_id="tr-tools", task_id="t")
    assert traj.outcome == Outcome.DONE, traj.error
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert obs[0] == "Wrote 26 bytes to pkg/hello.py."
    assert obs[1] == "hi from the slot\n[exit code: 4]"
    assert obs[2] == "print('hi from the slot')\n"
    assert "outside the workspace" in obs[3] and "leaves the workspace" in obs[4]
    assert obs[5].startswith("Error:") and "missing.txt" in obs[5]
    assert pool.stats()["slots_in_use"] == 0


async def test_host_death_mid_trajectory_is_a_sandbox_error(pool):
    # after the first turn is sampled, the host is stopped under the trajectory
    policy = scripted([tc("terminal", command="echo alive"), tc("terminal", command="echo again"), "Done."])
    slot = await pool.acquire("tr-dies", image=IMAGE)
    sandbox = pool.sandbox(slot)
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, Task("t", "test", "x"))
    first = await conv.sample(timeout=10)
    assert "echo alive" in first.text
    await pool.backend.stop_host(pool._hosts[slot.host_id].host)  # the host goes away
    traj = await run_agent(conv, sandbox, AgentConfig(), trajectory_id="tr-dies", task_id="t")
    assert traj.outcome == Outcome.SANDBOX_ERROR and traj.error
    with pytest.raises(Exception):
        await pool.release(slot)
    # the pool replaces the host; later trajectories still get slots
    async with pool.session("tr-after", image=IMAGE) as sb:
        assert (await sb.exec("echo ok")).stdout == "ok\n"


async def test_gold_rollout_scores_one_in_a_real_slot(pool, tmp_path_factory):
    env = SweSmithEnv(TaskSourceConfig(cache_dir=str(tmp_path_factory.mktemp("repo-cache")),
                                       repo_sources=[], pytest_plugin_autoload=False))
    task = load_tasks(TaskSourceConfig())[0]
    policy = make_policy(PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER), env)
    async with pool.session("tr-gold", image=task.image) as sandbox:
        traj = await run_rollout(task, env, policy, sandbox, AgentConfig(max_turns=20),
                                 trajectory_id="tr-gold")
    assert traj.outcome == Outcome.DONE, traj.error
    assert traj.score == 1.0, traj.metadata.get("verdict")
    assert traj.turns == len(env.reference_solution(task)) + 1
    assert {"prepare_time", "verify_time", "llm_time", "tool_time"} <= set(traj.metadata["timings"])
    group = ScoredGroup(task, [traj])
    data = group.to_atropos(include_messages=True)
    assert data["scores"] == [1.0]
    assert data["group_overrides"]["inference_logprobs_available"] is False
    assert ScoredGroup.from_dict(json.loads(json.dumps(group.to_dict()))).to_atropos(True) == data


async def test_gold_rollout_with_the_persistent_shell_scores_1_and_tells_the_model(
        pool, tmp_path_factory):
    """`agent.persistent_shell`: the reference solution's commands run through the session
    script and still grade 1.0 in the same slot; the prompt describes that terminal."""
    env = SweSmithEnv(TaskSourceConfig(cache_dir=str(tmp_path_factory.mktemp("repo-cache")),
                                       repo_sources=[], pytest_plugin_autoload=False))
    task = load_tasks(TaskSourceConfig())[1]
    policy = make_policy(PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER), env)
    async with pool.session("tr-gold-shell", image=task.image) as sandbox:
        traj = await run_rollout(task, env, policy, sandbox,
                                 AgentConfig(max_turns=20, persistent_shell=True),
                                 trajectory_id="tr-gold-shell")
    assert traj.outcome == Outcome.DONE, traj.error
    assert traj.score == 1.0, traj.metadata.get("verdict")
    prompt = policy.renderer.decode(traj.record.tokens)
    assert PERSISTENT_TERMINAL in prompt and "no state carries over" not in prompt
