"""`simulated`: a policy with a model's timing but no model, for load tests and sizing.

Each conversation samples `turns` turns, each after a latency (`latency` seconds, or drawn
uniformly from `latency * [1 - latency_spread, 1 + latency_spread]` from a seed), and each
holding one real `terminal` tool call (the `commands`, in turn) that the agent runs in the
trajectory's real slot; then one closing reply without a call ends it (`done`) at once. The
text of every turn is tokenized with the configured tokenizer, so token counts, masks and the
template suffixes are those of a real trajectory. Logprobs are unavailable and marked so.

Scores: with `grading=false` (the default) the task's real grading is replaced by
`SimulatedScoring`: the score is 1.0 with probability `success_rate`, drawn from the seed,
the task id and how many trajectories of that task this worker scored before: the same seed
gives the same scores (and nothing runs in the slot for it). With `grading=true`
the task's own `verify` runs (tests in the slot, as for a real model). `prepare=false` skips
the task's slot preparation too (the trajectory starts in the slot's clean workspace): a
load test of the cluster alone, without the cost of checking out repos.

Everything else (leases, acquire, prepare, the agent loop, the actor hops, release, the
trainer sink) is the real path: only the model is missing.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from rollout.config_model import ConfigModel, Str
from rollout.policy.conversation import Generation, TokenConversation, TokenPolicy
from rollout.protocols import Sandbox, TaskEnv
from rollout.agent.toolcalls import format_hermes_call
from rollout.types import Task, ToolCall, Verdict

log = logging.getLogger(__name__)

FINAL_MESSAGE = "The simulated run is over."


class SimulatedSettings(ConfigModel):
    """`policy.simulated.*`: the timing and the tool calls of the simulated model."""

    section: ClassVar[str] = "policy.simulated"

    latency: Annotated[float, Field(ge=0)] = 1.0  # seconds per turn (the mean)
    latency_spread: Annotated[float, Field(ge=0, le=1)] = 0.0  # 0: every turn exactly `latency`
    turns: Annotated[int, Field(ge=1)] = 4  # turns with a tool call, before the closing reply
    commands: list[Str] = Field(
        default_factory=lambda: ["ls -A", "cat README* 2>/dev/null | head -c 2000; true",
                                 "python -c 'print(sum(range(1000)))'"],
        min_length=1)
    grading: bool = False  # true: the task's real grading; false: scores from the seed
    success_rate: Annotated[float, Field(ge=0, le=1)] = 0.5
    prepare: bool = True  # false: skip the task's slot preparation (cluster-only load tests)

    @model_validator(mode="after")
    def _grading_needs_prepare(self) -> SimulatedSettings:
        if self.grading and not self.prepare:
            raise ValueError("grading=true needs prepare=true: the task's tests would run "
                             "in a slot that was never prepared")
        return self


def unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from `parts` (stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SimulatedPolicy(TokenPolicy):
    name = "simulated"
    logprobs_available = False

    def __init__(self, cfg: Any, renderer: Any) -> None:
        super().__init__(cfg, renderer)
        self.sim: SimulatedSettings = cfg.simulated
        self.seed = cfg.seed if cfg.seed is not None else 0

    def turn_latency(self, conv: TokenConversation) -> float:
        s = self.sim
        if not s.latency_spread:
            return s.latency
        u = unit(self.seed, "latency", conv.task.task_id, conv.index, conv.turns)
        return s.latency * (1.0 + s.latency_spread * (2.0 * u - 1.0))

    def turn_text(self, conv: TokenConversation) -> str:
        if conv.turns >= self.sim.turns:
            return FINAL_MESSAGE
        commands = self.sim.commands
        command = commands[conv.turns % len(commands)]
        call = ToolCall("terminal", {"command": command}, f"sim-{conv.turns + 1}")
        return f"Step {conv.turns + 1}: let me look.\n{format_hermes_call(call)}"

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        if conv.turns < self.sim.turns:
            await asyncio.sleep(self.turn_latency(conv))
        ids = self.renderer.encode(self.turn_text(conv)) + self.renderer.turn_closing_ids()
        finish = "stop"
        if len(ids) > max_tokens:  # behave like a sampler that hit its token limit
            ids, finish = ids[:max_tokens], "length"
        return Generation(token_ids=ids, logprobs=None, finish_reason=finish)

    def task_env(self, env: TaskEnv) -> TaskEnv:
        if self.sim.grading:
            return env
        return SimulatedScoring(env, self.seed, self.sim.success_rate, prepare=self.sim.prepare)


class SimulatedScoring:
    """A `TaskEnv` that prompts (and unless `prepare=False` prepares) as `env` does and
    scores from a seed: `verify` scores 1.0 with probability `success_rate`."""

    def __init__(self, env: TaskEnv, seed: int, success_rate: float, *,
                 prepare: bool = True) -> None:
        self.env = env
        self.run_prepare = prepare
        self.seed = seed
        self.success_rate = success_rate
        self._scored: collections.Counter[str] = collections.Counter()

    def messages(self, task: Task) -> list[dict[str, Any]]:
        return self.env.messages(task)

    def tools(self, task: Task) -> list[dict[str, Any]]:
        return self.env.tools(task)

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        if self.run_prepare:
            await self.env.prepare(task, sandbox)

    def reference_solution(self, task: Task) -> list[ToolCall]:
        return self.env.reference_solution(task)

    def __getattr__(self, name: str) -> Any:  # tool_executor, sandbox_spec, wall_clock_budget
        if name == "env":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    async def verify(self, task: Task, sandbox: Sandbox, **_: Any) -> Verdict:
        k = self._scored[task.task_id]
        self._scored[task.task_id] += 1
        score = 1.0 if unit(self.seed, "score", task.task_id, k) < self.success_rate else 0.0
        return Verdict(score, {"reason": "simulated", "simulated_index": k})
