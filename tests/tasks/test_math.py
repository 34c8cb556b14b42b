"""Math tasks: the answer checker, the loaders (bundled, GSM8K format), and whole rollouts:
`math` with no slot at all, `math_repl` in a real slot whose Python session keeps state."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import load_tasks, make_env
from rollout.tasks.answers import final_answer, parse_number, same_number
from rollout.tasks.base import NoSlot
from rollout.tasks.math import load_math
from rollout.tasks.config import TaskSourceConfig
from rollout.types import Outcome
from tests.agent_support import QWEN_TOKENIZER
from tests.test_agent_slotpool import tc

@pytest.mark.parametrize("given, reference", [
    ("42", "42"), ("42.0", "42"), ("$1,234.50", "1234.5"), ("\\boxed{19/24}", "19/24"),
    ("\\frac{19}{24}", "0.7916666666666666"), ("-\\dfrac{3}{4}", "-0.75"), ("\\dfrac34", "3/4"),
    ("2 1/2", "2.5"), ("1.5e3", "1500"), ("45%", "45"), ("12 apples.", "12"),
    ("3.5999999999999996", "3.6"), ("-8.0", "-8"), ("\\$12", "12"),
])
def test_equal_numbers_in_many_forms(given, reference):
    assert same_number(given, reference)


@pytest.mark.parametrize("given, reference", [
    ("41", "42"), ("3.61", "3.6"), ("-8", "8"), ("19/25", "19/24"), ("", "1"), (None, "1"),
    ("many", "1"), ("1/0", "1"),
])
def test_different_or_unreadable_answers_do_not_match(given, reference):
    assert not same_number(given, reference)


def test_final_answer_out_of_free_text():
    assert final_answer("so x = 3, then \\boxed{\\frac{1}{2}} and 7") == "\\frac{1}{2}"
    assert parse_number(final_answer("We get 12 then 15. The answer is 17 apples.")) == 17
    assert final_answer("Steps: 3 + 4 = 7\n#### 7") == "7"
    assert final_answer("first 3, later 9") == "9" and final_answer("no digits") is None


def test_loaders_bundled_and_gsm8k_format(tmp_path):
    bundled = load_tasks({"kind": "math_repl", "filter": ""})
    assert len(bundled) == 12 and all(t.kind == "math_repl" for t in bundled)
    assert len({t.task_id for t in bundled}) == 12
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Tom has 3 pens and buys 4. How many now?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "Cost?", "answer": "It is $1,200.\n#### 1,200"},
            {"question": "No answer"}, {"question": "Words", "answer": "#### many"}]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n{not json\n")
    tasks, report = load_math(TaskSourceConfig(kind="math", source=str(path), filter=""))
    assert [(t.task_id, t.data["answer"]) for t in tasks] == [("gsm8k-1", "7"), ("gsm8k-2", "1,200")]
    assert dict(report.skipped) == {"missing answer": 1, "answer is not a number": 1,
                                    "invalid JSON": 1}
    with pytest.raises(FileNotFoundError, match="not a JSONL file"):
        load_math(TaskSourceConfig(kind="math", source=str(tmp_path / "nope.jsonl")))


def _policy(env, kind="gold", responses=()):
    script = {"responses": list(responses)} if kind == "scripted" else {}  # scripted's own key
    return make_policy(PolicyConfig(type=kind, tokenizer=QWEN_TOKENIZER, **script), env)


@pytest.mark.asyncio(loop_scope="module")
async def test_math_without_a_slot_gold_final_reply_and_no_op():
    env = make_env("math", {"kind": "math", "filter": ""})
    task = load_tasks({"kind": "math", "filter": ""})[0]
    assert env.sandbox_spec(task) is None and [t["function"]["name"] for t in env.tools(task)] == ["submit"]
    traj = await run_rollout(task, env, _policy(env), NoSlot(), AgentConfig(), trajectory_id="m1")
    assert traj.outcome == Outcome.DONE and traj.score == 1.0, traj.metadata
    # No submission: the final reply's answer is graded.
    answer = task.data["answer"]
    said = _policy(env, "scripted", [f"So the total is \\boxed{{{answer}}}."])
    traj = await run_rollout(task, env, said, NoSlot(), AgentConfig(), trajectory_id="m2")
    assert traj.score == 1.0 and "final reply" in traj.metadata["verdict"]["reason"]
    noop = _policy(env, "scripted", ["I cannot tell."])
    traj = await run_rollout(task, env, noop, NoSlot(), AgentConfig(), trajectory_id="m3")
    assert traj.outcome == Outcome.DONE and traj.score == 0.0
    # A tool the task does not offer is an error observation, not a crash.
    wrong = _policy(env, "scripted", [tc("terminal", command="ls"), "Done."])
    traj = await run_rollout(task, env, wrong, NoSlot(), AgentConfig(), trajectory_id="m4")
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert "unknown tool" in obs[0].lower() and "submit" in obs[0] and traj.score == 0.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=2),
                             SlotLimits(isolation="bwrap", memory_mb=512))
    await p.start()
    yield p
    await p.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_math_repl_keeps_state_in_a_real_slot_and_scores(pool):
    env = make_env("math_repl", {"kind": "math_repl", "filter": ""})
    task = next(t for t in load_tasks({"kind": "math_repl", "filter": ""})
                if t.task_id == "math-collatz")
    async with pool.session("mr-gold") as sandbox:
        traj = await run_rollout(task, env, _policy(env), sandbox, AgentConfig(),
                                 trajectory_id="mr-gold")
    assert traj.outcome == Outcome.DONE and traj.score == 1.0, traj.metadata
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert obs == ["111\n", "Submitted: 111"]
    stateful = _policy(env, "scripted", [tc("python", code="n = 27 * 4"), tc("python", code="n + 3"),
                                         tc("submit", answer="112"), "Done."])
    async with pool.session("mr-state") as sandbox:
        traj = await run_rollout(task, env, stateful, sandbox, AgentConfig(),
                                 trajectory_id="mr-state")
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert obs[:2] == ["[no output]\n", "111\n"] and traj.score == 0.0  # 112 is wrong
    async with pool.session("mr-noop") as sandbox:  # the slot was reset: nothing submitted
        traj = await run_rollout(task, env, _policy(env, "scripted", ["No idea."]), sandbox,
                                 AgentConfig(), trajectory_id="mr-noop")
    assert traj.outcome == Outcome.DONE and traj.score == 0.0
    assert pool.stats()["slots_in_use"] == 0
