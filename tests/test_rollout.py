"""run_rollout: prepare, loop, verify in the same slot; failures become outcomes."""

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.agent.tools import TOOL_SCHEMAS
from rollout.types import INFRA_OUTCOMES, GradingError, Outcome, SandboxError, Task, ToolCall, Verdict
from tests.agent_support import QWEN_TOKENIZER, DirSandbox

TASK = Task("calc-1", "toy", "Make add() add.", data={"bug": "return a - b"})


class ToyEnv:
    """A task whose bug is in calc.py; verify runs it in the slot."""

    def __init__(self, fail_prepare=False, fail_verify=None):
        self.fail_prepare, self.fail_verify = fail_prepare, fail_verify
        self.verified_in = None

    def messages(self, task):
        return [{"role": "user", "content": task.instruction}]

    def tools(self, task):
        return TOOL_SCHEMAS

    async def prepare(self, task, sandbox):
        if self.fail_prepare:
            raise SandboxError("could not start the workspace")
        await sandbox.write_file("calc.py", f"def add(a, b):\n    {task.data['bug']}\n".encode())

    async def verify(self, task, sandbox, *, transcript=()):
        self.verified_in = sandbox
        if self.fail_verify:
            raise self.fail_verify
        res = await sandbox.exec("python -c 'import calc; assert calc.add(2, 3) == 5'")
        return Verdict(1.0 if res.ok else 0.0, {"exit_code": res.exit_code})

    def reference_solution(self, task):
        return [ToolCall("write_file", {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"}),
                ToolCall("terminal", {"command": "python -c 'import calc; print(calc.add(2, 3))'"})]


def gold(env):
    return make_policy(PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER), env)


async def test_gold_rollout_scores_one_and_records_timings(tmp_path):
    env, sandbox = ToyEnv(), DirSandbox(tmp_path)
    traj = await run_rollout(TASK, env, gold(env), sandbox, AgentConfig(), trajectory_id="g1")
    assert traj.outcome == Outcome.DONE and traj.score == 1.0 and traj.turns == 3
    assert env.verified_in is sandbox and traj.metadata["verdict"] == {"exit_code": 0}
    assert traj.metadata["policy"] == "gold"
    assert set(traj.metadata["timings"]) == {"prepare_time", "verify_time", "llm_time", "tool_time"}
    obs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert obs[1] == "5\n[exit code: 0]"


async def test_doing_nothing_scores_zero(tmp_path):
    env = ToyEnv()
    policy = make_policy(PolicyConfig(type="scripted", tokenizer=QWEN_TOKENIZER, responses=["Looks fine."]))
    traj = await run_rollout(TASK, env, policy, DirSandbox(tmp_path), AgentConfig(), trajectory_id="n1")
    assert traj.outcome == Outcome.DONE and traj.score == 0.0


async def test_prepare_failure_is_a_sandbox_error_outcome(tmp_path):
    env = ToyEnv(fail_prepare=True)
    traj = await run_rollout(TASK, env, gold(env), DirSandbox(tmp_path), AgentConfig(), trajectory_id="p1")
    assert traj.outcome == Outcome.SANDBOX_ERROR and traj.score == 0.0
    assert "could not start the workspace" in traj.error and traj.record.tokens == []
    assert env.verified_in is None


async def test_sandbox_death_during_the_loop_skips_verify(tmp_path):
    env = ToyEnv()
    sandbox = DirSandbox(tmp_path, die_after=1)  # prepare's write succeeds, the agent's fails
    traj = await run_rollout(TASK, env, gold(env), sandbox, AgentConfig(), trajectory_id="d1")
    assert traj.outcome == Outcome.SANDBOX_ERROR and traj.score == 0.0 and env.verified_in is None


async def test_verify_failures_are_infrastructure_outcomes_without_raising(tmp_path):
    env = ToyEnv(fail_verify=SandboxError("host lost during grading"))
    traj = await run_rollout(TASK, env, gold(env), DirSandbox(tmp_path), AgentConfig(), trajectory_id="v1")
    assert traj.outcome == Outcome.SANDBOX_ERROR and traj.score == 0.0 and "grading" in traj.error
    env = ToyEnv(fail_verify=KeyError("FAIL_TO_PASS"))
    traj = await run_rollout(TASK, env, gold(env), DirSandbox(tmp_path / "b"), AgentConfig(), trajectory_id="v2")
    # a grader bug is not the model's failure: no score is sent for it
    assert traj.outcome == Outcome.GRADING_ERROR and "KeyError" in traj.error
    assert traj.metadata["grading_error"] == "grader_bug"
    env = ToyEnv(fail_verify=GradingError("python: not found", "cannot_run"))
    traj = await run_rollout(TASK, env, gold(env), DirSandbox(tmp_path / "c"), AgentConfig(), trajectory_id="v3")
    assert traj.outcome == Outcome.GRADING_ERROR and traj.metadata["grading_error"] == "cannot_run"
    assert traj.outcome in INFRA_OUTCOMES


async def test_a_broken_task_row_is_recorded_not_raised(tmp_path):
    env = ToyEnv()
    env.reference_solution = lambda task: task.data["patch"]  # the row lacks it
    traj = await run_rollout(TASK, env, gold(env), DirSandbox(tmp_path), AgentConfig(), trajectory_id="b1")
    assert traj.outcome == Outcome.POLICY_ERROR and "KeyError" in traj.error
