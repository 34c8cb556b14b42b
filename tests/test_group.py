"""generate_group without Ray: a real local SlotPool (slot servers under bubblewrap), the real
math kinds (`math_repl` in a slot, `math` with none), scripted and gold policies.

- a group is graded in its slots, every slot is released, its trace says how it ran;
- a kind that needs no slot runs through the same session and acquires nothing;
- no slot in time is an infrastructure outcome: the group says it must be retried (no 0.0);
- a cancelled group releases the slots it held.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig
from rollout.group import GroupSetup, LocalSlots, generate_group
from rollout.policy import PolicyConfig, make_policy
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import load_tasks
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.mix import TaskEnvs
from rollout.types import Outcome
from tests.agent_support import QWEN_TOKENIZER
from tests.test_agent_slotpool import tc

pytestmark = pytest.mark.asyncio(loop_scope="module")
SLOTS = 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=SLOTS),
                             SlotLimits(isolation="bwrap", memory_mb=512))
    await p.start()
    yield p
    await p.stop()


ENVS = TaskEnvs(TaskSourceConfig(kind="math_repl", filter=""))
COLLATZ = next(t for t in load_tasks({"kind": "math_repl", "filter": ""})
               if t.task_id == "math-collatz")
NO_SLOT_TASK = load_tasks({"kind": "math", "filter": ""})[0]


def setup_of(slots, policy="gold", responses=(), group_size=SLOTS) -> GroupSetup:
    extra = {"responses": list(responses)} if policy == "scripted" else {}
    made = make_policy(PolicyConfig(type=policy, tokenizer=QWEN_TOKENIZER, **extra), ENVS)
    return GroupSetup(policy=made, envs=ENVS, agent=AgentConfig(), slots=slots,
                      group_size=group_size, holder="test-worker")


async def test_a_group_is_graded_in_its_slots_and_releases_them(pool):
    before = pool.stats()["acquires"]
    setup = setup_of(LocalSlots(pool))
    group = await generate_group(COLLATZ, setup, attempt=3)
    assert [t.outcome for t in group.trajectories] == [Outcome.DONE] * SLOTS
    assert group.scores == [1.0] * SLOTS and group.retry_reason is None
    assert all(t.trajectory_id.startswith("test-worker/math-collatz/3/") for t in group.trajectories)
    lines = group.event_lines("accepted")
    assert [[e[0] for e in line["ev"]][:2] for line in lines] == [["acquire", "prepare"]] * SLOTS
    assert all(line["ev"][-1][0] == "verify" and line["group"] == "accepted" for line in lines)
    assert setup.stats.trajectories_done == SLOTS and setup.stats.trajectories_in_flight == 0
    # A wrong answer is the model's failure: really graded, a 0.0 that is sent.
    wrong = setup_of(LocalSlots(pool), "scripted", [tc("submit", answer="112"), "Done."])
    group = await generate_group(COLLATZ, wrong)
    assert group.scores == [0.0] * SLOTS and group.retry_reason is None
    assert {t.metadata["verdict"]["answer"] for t in group.trajectories} == {"112"}
    assert pool.stats()["acquires"] == before + 2 * SLOTS
    assert pool.stats()["slots_in_use"] == 0


async def test_a_kind_without_a_slot_runs_through_the_same_session(pool):
    before = pool.stats()["acquires"]
    answer = NO_SLOT_TASK.data["answer"]
    setup = setup_of(LocalSlots(pool), "scripted", [f"It is \\boxed{{{answer}}}."], group_size=3)
    group = await generate_group(NO_SLOT_TASK, setup)
    assert group.scores == [1.0] * 3 and group.retry_reason is None
    assert all("final reply" in t.metadata["verdict"]["reason"] for t in group.trajectories)
    assert all("acquire" not in [e[0] for e in line["ev"]] for line in group.event_lines("x"))
    assert pool.stats()["acquires"] == before


async def test_no_slot_in_time_is_a_retried_group_never_a_zero(pool):
    held = [await pool.acquire(f"holder-{i}") for i in range(SLOTS)]  # every slot is taken
    try:
        setup = setup_of(LocalSlots(pool, acquire_timeout=0.2), group_size=1)
        group = await generate_group(COLLATZ, setup)
    finally:
        for slot in held:
            await pool.release(slot)
    (traj,) = group.trajectories
    assert traj.outcome == Outcome.SANDBOX_ERROR and "SandboxError" in traj.error
    assert group.retry_reason.startswith("sandbox_error: ")
    assert group.to_atropos()["overrides"][0]["set_advantage_to_zero"]
    (line,) = group.event_lines("retry")
    assert line["ev"][0][0] == "acquire" and line["ev"][0][3] == {"waited": None, "ok": False}
    assert setup.stats.outcomes == {"sandbox_error": 1}


async def test_a_cancelled_group_releases_its_slots(pool):
    slow = setup_of(LocalSlots(pool), "scripted",
                    [tc("python", code="import time; time.sleep(60)"), "Done."])
    group = asyncio.create_task(generate_group(COLLATZ, slow))
    while pool.stats()["slots_in_use"] < SLOTS:  # both trajectories hold their slot
        assert not group.done(), group
        await asyncio.sleep(0.02)
    group.cancel()
    with pytest.raises(asyncio.CancelledError):
        await group
    assert pool.stats()["slots_in_use"] == 0
    assert slow.stats.trajectories_in_flight == 0


async def test_the_gate_runs_one_trajectory_at_a_time_and_its_clock_starts_when_it_runs(pool):
    setup = setup_of(LocalSlots(pool))
    setup.gate = asyncio.Semaphore(1)
    group = await generate_group(COLLATZ, setup)
    assert group.scores == [1.0] * SLOTS
    first, second = sorted(group.event_lines("accepted"), key=lambda line: line["t0"])
    assert "queued" in first and "queued" in second
    first_end = first["t0"] + max(off + dur for _, off, dur, _ in first["ev"])
    # The second's clock started after the first had finished (t0 is rounded to the ms).
    assert second["t0"] >= first_end - 0.002 and second["queued"] > 0
