"""The simulated policy: real tool calls in a real slot (local slot server with bubblewrap),
real token counts with the Qwen3 tokenizer, scores and latencies from a seed."""

from __future__ import annotations

import pytest

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.policy.simulated import FINAL_MESSAGE, SimulatedScoring
from rollout.rollout import run_rollout
from rollout.types import Outcome
from tests.agent_support import QWEN_TOKENIZER
from tests.sandbox.conftest import local_pool
from tests.test_rollout import TASK, ToyEnv


def simulated(**settings) -> object:
    seed = settings.pop("seed", 3)
    return make_policy(PolicyConfig(type="simulated", tokenizer=QWEN_TOKENIZER, seed=seed,
                                    simulated={"latency": 0.0, **settings}))


@pytest.fixture
async def pool():
    p = local_pool(min_hosts=1, max_hosts=1, slots_per_host=2, isolation="bwrap")
    await p.start()
    yield p
    await p.stop()


async def test_turns_are_real_tool_calls_with_real_tokens(pool) -> None:
    commands = ["ls -A", "cat calc.py", "python -c 'print(6 * 7)'"]
    policy = simulated(turns=4, commands=commands)
    toy = ToyEnv()
    env = policy.task_env(toy)
    assert isinstance(env, SimulatedScoring)
    async with pool.session("sim-1") as sandbox:
        traj = await run_rollout(TASK, env, policy, sandbox, AgentConfig(), trajectory_id="sim-1")
    assert traj.outcome == Outcome.DONE and traj.turns == 5, traj.error
    assert traj.metadata["tool_calls"] == 4 and traj.metadata["tool_errors"] == 0
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert obs[0] == "calc.py\n[exit code: 0]"  # prepared by the env, listed in the slot
    assert obs[1].startswith("def add(a, b):") and obs[2] == "42\n[exit code: 0]"
    assert obs[3] == "calc.py\n[exit code: 0]"  # the commands cycle
    rec, renderer = traj.record, policy.renderer
    assert len(rec.tokens) == len(rec.masks) == len(rec.logprobs)
    assert not rec.logprobs_available
    final = renderer.encode(FINAL_MESSAGE) + renderer.turn_closing_ids()
    assert rec.tokens[-len(final):] == final == rec.masks[-len(final):]
    sampled = [t for t, m in zip(rec.tokens, rec.masks) if m != -100]
    assert sampled == [i for t in range(5) for i in
                       renderer.encode(policy.turn_text(_Turn(t))) + renderer.turn_closing_ids()]
    assert traj.metadata["verdict"]["reason"] == "simulated"


class _Turn:
    """What `turn_text` / `turn_latency` read of a conversation."""

    def __init__(self, turns: int, index: int = 0, task=TASK) -> None:
        self.turns, self.index, self.task = turns, index, task


async def test_scores_follow_the_seed_and_grading_true_runs_the_tasks_own(pool) -> None:
    async def scores(seed: int, n: int = 12) -> list[float]:
        policy = simulated(turns=1, commands=["true"], seed=seed, success_rate=0.5)
        env = policy.task_env(ToyEnv())
        out = []
        async with pool.session(f"sim-seed-{seed}") as sandbox:
            for i in range(n):
                traj = await run_rollout(TASK, env, policy, sandbox, AgentConfig(),
                                         trajectory_id=f"s{i}")
                out.append(traj.score)
        return out

    first, again, other = await scores(1), await scores(1), await scores(2)
    assert first == again and first != other
    assert 0 < sum(first) < len(first)  # a mix: groups of them have nonzero advantages
    graded = simulated(turns=1, commands=["true"], grading=True)
    toy = ToyEnv()
    assert graded.task_env(toy) is toy
    async with pool.session("sim-graded") as sandbox:
        traj = await run_rollout(TASK, toy, graded, sandbox, AgentConfig(), trajectory_id="g")
    assert traj.score == 0.0 and traj.metadata["verdict"] == {"exit_code": 1}  # the bug is there


def test_latency_is_fixed_or_drawn_from_the_seed() -> None:
    fixed = simulated(latency=0.25)
    assert {fixed.turn_latency(_Turn(t, i)) for t in range(3) for i in range(3)} == {0.25}
    spread = simulated(latency=1.0, latency_spread=0.5)
    draws = [spread.turn_latency(_Turn(t, i)) for t in range(4) for i in range(8)]
    assert all(0.5 <= d <= 1.5 for d in draws) and len(set(draws)) == len(draws)
    assert draws == [simulated(latency=1.0, latency_spread=0.5).turn_latency(_Turn(t, i))
                     for t in range(4) for i in range(8)]


def test_bad_settings_are_one_line_errors() -> None:
    from rollout.config_model import ConfigError

    with pytest.raises(ConfigError, match="policy.simulated.turns"):
        PolicyConfig(type="simulated", tokenizer=QWEN_TOKENIZER, simulated={"turns": 0})
    with pytest.raises(ConfigError, match="policy.simulated.success_rate"):
        PolicyConfig(type="simulated", tokenizer=QWEN_TOKENIZER, simulated={"success_rate": 2})
    with pytest.raises(ConfigError, match="grading=true needs prepare=true"):
        PolicyConfig(type="simulated", tokenizer=QWEN_TOKENIZER,
                     simulated={"grading": True, "prepare": False})


def test_trajectories_of_one_prompt_share_its_rendering_not_their_records() -> None:
    policy = simulated()
    env = ToyEnv()
    a, b = (policy.open(env.messages(TASK), env.tools(TASK), TASK) for _ in range(2))
    assert a.token_ids() == b.token_ids() == policy.renderer.prompt_ids(
        env.messages(TASK), env.tools(TASK))
    a._record.tokens.append(0)
    assert b.num_tokens == a.num_tokens - 1
    other = policy.open([{"role": "user", "content": "Something else."}], env.tools(TASK), TASK)
    assert other.token_ids() != b.token_ids()
