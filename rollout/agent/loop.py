"""The agent loop: sample a turn, parse its tool calls, run them in the slot, repeat.

Every way the loop ends is a named `Outcome`:
- done: a turn with no tool call (not even a malformed one);
- max_turns: `max_turns` turns were sampled (the last turn's calls still run);
- context_full: the record reached `max_context_tokens`, or a turn was cut off by it;
- timeout: the trajectory's own wall-clock budget ran out (in a tool call or an LLM call);
- policy_error: the policy server failed: one LLM call got no answer within `llm_timeout`
  ("policy timeout"), the server was unreachable or answered 5xx after retries, answered 4xx,
  or sent a reply that is not a well-formed completion;
- sandbox_error: the slot itself failed (its host died); the slot must not be reused.

`run_agent` never raises for policy or sandbox failures (only cancellation propagates). The
record is always consistent: a failed turn is not half-appended.

Why the two timeouts differ: `wall_clock_budget` is the trajectory's own allowance, like
`max_turns`; running out of it is the agent's outcome and its workspace is graded as it stands.
`llm_timeout` bounds one answer of the policy server; a server that does not answer in time
is an infrastructure failure (`policy_error`, an `INFRA_OUTCOMES` member: the group is retried,
then dropped with the reason), never a score. The model's own text is never a policy_error,
however malformed: a bad tool call is an error observation the model sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from pydantic import field_validator

from rollout.config_model import ConfigModel, Str
from rollout.protocols import Conversation, Sandbox
from rollout.agent.toolcalls import ParseLimits, ToolCallError, parse_tool_calls
from rollout.agent.tools import TOOL_NAMES, SandboxTools, ToolExecutor, ToolLimits
from rollout.record.trace import Trace, clip, tool_fields
from rollout.types import Outcome, PolicyError, SandboxError, ToolCall, ToolResult, Trajectory

log = logging.getLogger(__name__)


class AgentConfig(ConfigModel):
    section: ClassVar[str] = "agent"

    max_turns: int = 30
    max_context_tokens: int = 32_768
    wall_clock_budget: float = 1800.0  # seconds for the whole loop
    llm_timeout: float = 300.0  # seconds for one LLM call (retries included)
    tool_timeout_default: float = 60.0
    tool_timeout_min: float = 1.0
    tool_timeout_max: float = 600.0
    max_calls_per_turn: int = 8
    max_argument_bytes: int = 100_000
    max_observation_chars: int = 16_000
    max_read_bytes: int = 1_000_000
    workspace_root: Str | None = None  # absolute path the model may use for the workspace
    min_turn_tokens: int = 16  # below this much room left, the context counts as full
    # The terminal tool keeps its working directory and exported variables between calls.
    persistent_shell: bool = False
    # Tools offered beside the env's own, for every task: `tmux` (the interactive terminal)
    # and external tools of the tool server (http_fetch, calculator, plug-ins). A task may
    # name its own too (a terminal task's environment/tools). See rollout/agent/toolbox.py.
    tools: list[Str] = []
    tool_server_url: Str | None = None  # set by launch when tool_server.launch=true
    tool_server_token_env: Str = "ROLLOUT_TOOL_SERVER_TOKEN"  # where this process finds its token
    # The terminal and tmux sessions as asciinema casts in <run_dir>/casts/ (when the run
    # records events: metrics.enabled); the report plays them.
    record_terminals: bool = True

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: list[str]) -> list[str]:
        from rollout.agent.toolbox import extra_tool_schemas

        extra_tool_schemas(value)  # raises, naming the known ones
        return value

    @property
    def tool_limits(self) -> ToolLimits:
        return ToolLimits(
            timeout_default=self.tool_timeout_default,
            timeout_min=self.tool_timeout_min,
            timeout_max=self.tool_timeout_max,
            max_observation_chars=self.max_observation_chars,
            max_read_bytes=self.max_read_bytes,
            workspace_root=self.workspace_root,
            persistent_shell=self.persistent_shell,
        )

    @property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            max_calls=self.max_calls_per_turn,
            max_argument_bytes=self.max_argument_bytes,
            known_tools=TOOL_NAMES,
        )


async def run_agent(
    conversation: Conversation,
    sandbox: Sandbox,
    cfg: AgentConfig,
    *,
    trajectory_id: str,
    task_id: str,
    tools: ToolExecutor | None = None,
    parse_limits: ParseLimits | None = None,
    trace: Trace | None = None,
) -> Trajectory:
    """Run one trajectory's loop. `tools` defaults to the built-in tools over `sandbox`;
    `trace` (optional) gets a `turn` event per sampled turn and a `tool` event per call."""
    loop = _AgentLoop(conversation, tools or SandboxTools(sandbox, cfg.tool_limits), cfg,
                      parse_limits or cfg.parse_limits, {"trajectory": trajectory_id, "task": task_id})
    loop.trace = trace
    outcome, error = await loop.run()
    log.info("trajectory %s of %s ended: %s after %d turns%s", trajectory_id, task_id,
             outcome.value, loop.turns, f" ({error})" if error else "")
    return Trajectory(
        task_id=task_id,
        trajectory_id=trajectory_id,
        outcome=outcome,
        record=conversation.record(),
        turns=loop.turns,
        llm_time=loop.llm_time,
        tool_time=loop.tool_time,
        error=error,
        metadata={"tool_calls": loop.tool_calls, "tool_errors": loop.tool_errors},
    )


class _AgentLoop:
    def __init__(self, conv: Conversation, tools: ToolExecutor, cfg: AgentConfig,
                 limits: ParseLimits, ctx: dict[str, str]) -> None:
        self.conv, self.tools, self.cfg, self.limits, self.ctx = conv, tools, cfg, limits, ctx
        self.turns = 0
        self.llm_time = 0.0
        self.tool_time = 0.0
        self.tool_calls = 0
        self.tool_errors = 0
        self.trace: Trace | None = None
        self.deadline = time.monotonic() + cfg.wall_clock_budget

    async def run(self) -> tuple[Outcome, str | None]:
        cfg = self.cfg
        while True:
            if self.turns >= cfg.max_turns:
                return Outcome.MAX_TURNS, None
            room = cfg.max_context_tokens - self.conv.num_tokens
            if room < max(cfg.min_turn_tokens, 1):
                return Outcome.CONTEXT_FULL, None
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return Outcome.TIMEOUT, "wall-clock budget exhausted"
            timeout = min(cfg.llm_timeout, remaining)
            started = time.monotonic()
            try:
                completion = await self.conv.sample(timeout=timeout, max_tokens=room)
            except TimeoutError:
                if timeout < cfg.llm_timeout:  # the trajectory's budget, not the server's limit
                    return Outcome.TIMEOUT, f"LLM call exceeded the wall-clock budget ({timeout:.1f}s)"
                return Outcome.POLICY_ERROR, (f"policy timeout: one LLM call got no answer within "
                                              f"agent.llm_timeout ({timeout:.1f}s)")
            except PolicyError as exc:
                return Outcome.POLICY_ERROR, str(exc)
            except Exception as exc:  # a client bug must not take the worker down
                log.exception("policy failed unexpectedly (%s)", self.ctx)
                return Outcome.POLICY_ERROR, f"{type(exc).__name__}: {exc}"
            finally:
                self.llm_time += time.monotonic() - started
            self.turns += 1
            if self.trace is not None:
                self.trace.add("turn", started, n=self.turns, tok=len(completion.token_ids),
                               fin=completion.finish_reason, text=clip(completion.text))

            parsed = parse_tool_calls(completion.text, self.limits)
            if not parsed.attempted:
                if completion.finish_reason == "length" and self.conv.num_tokens >= cfg.max_context_tokens:
                    return Outcome.CONTEXT_FULL, None
                return Outcome.DONE, None
            try:
                results = await self._execute(parsed.entries)
            except SandboxError as exc:
                return Outcome.SANDBOX_ERROR, str(exc)
            except Exception as exc:  # an executor bug: treat the slot as unusable
                log.exception("tool executor failed unexpectedly (%s)", self.ctx)
                return Outcome.SANDBOX_ERROR, f"{type(exc).__name__}: {exc}"
            if results is None:
                return Outcome.TIMEOUT, "wall-clock budget exhausted during tool calls"
            self.conv.add_tool_results([_tool_message(r) for r in results])

    async def _execute(self, entries: list[ToolCall | ToolCallError]) -> list[ToolResult] | None:
        """Run calls in order (a later call may depend on an earlier one); None on timeout."""
        results: list[ToolResult] = []
        for entry in entries:
            if isinstance(entry, ToolCallError):
                self.tool_errors += 1
                results.append(ToolResult(entry.call_id, entry.name, f"Error: {entry.message}", True))
                if self.trace is not None:  # never ran: replay skips it
                    self.trace.add("tool", time.monotonic(), parse_error=True, **tool_fields(
                        entry.name, {}, None, True, entry.message))
                continue
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return None
            started = time.monotonic()
            if self.trace is not None:
                self.trace.last_exit = None
            try:
                # The tool's own timeout is capped by the budget; this is the backstop for a
                # sandbox that does not honour it.
                result = await asyncio.wait_for(
                    self.tools.run(entry, max_timeout=remaining), timeout=remaining + 5.0
                )
            except TimeoutError:
                return None
            finally:
                self.tool_time += time.monotonic() - started
            self.tool_calls += 1
            self.tool_errors += int(result.is_error)
            if self.trace is not None:
                self.trace.add("tool", started, **tool_fields(
                    entry.name, entry.arguments, self.trace.last_exit, result.is_error,
                    result.content))
            results.append(result)
        return results


def _tool_message(result: ToolResult) -> dict[str, Any]:
    return {"role": "tool", "content": result.content, "tool_call_id": result.call_id,
            "name": result.name}
