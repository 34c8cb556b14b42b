"""One whole rollout in one slot: prepare, agent loop, verify.

`run_rollout` never raises for sandbox, policy or task failures: each becomes the
trajectory's outcome (score 0) with the error recorded. Grading that did not really run
(`GradingError`, or a bug in the grader) is `grading_error`, an infrastructure outcome whose
group is retried, never scored. Verification runs in the same slot
the agent used, unless the agent already ended in an infrastructure outcome (sandbox_error:
the slot is gone; policy_error: the policy server failed or timed out): that group is retried
whatever the score, so grading it would only spend the host's time. Only cancellation
propagates.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from rollout.agent.loop import AgentConfig, run_agent
from rollout.protocols import Policy, Sandbox, TaskEnv, ToolExecutor
from rollout.agent.toolbox import Toolbox
from rollout.agent.tools import describe_tools, tool_names
from rollout.tasks.base import agent_config_for, task_toolset
from rollout.record.trace import Trace, TracedSandbox, verify_fields
from rollout.types import (INFRA_OUTCOMES, GradingError, Outcome, SandboxError, Task,
                           TokenRecord, Trajectory)

log = logging.getLogger(__name__)


async def run_rollout(
    task: Task,
    env: TaskEnv,
    policy: Policy,
    sandbox: Sandbox,
    cfg: AgentConfig,
    *,
    trajectory_id: str,
    tools: ToolExecutor | None = None,
    trace: Trace | None = None,
) -> Trajectory:
    """`trace` (optional) gets the prepare and verify events, and the agent's."""
    timings: dict[str, float] = {}
    if trace is not None:
        sandbox = TracedSandbox(sandbox, trace)
    started = time.monotonic()
    try:
        await env.prepare(task, sandbox)
    except Exception as exc:  # SandboxError, or a broken task row: the slot state is unknown
        timings["prepare_time"] = time.monotonic() - started
        if trace is not None:
            trace.add("prepare", started, ok=False)
        log.warning("prepare failed for %s/%s: %s", task.task_id, trajectory_id, exc)
        return _failed(task, trajectory_id, Outcome.SANDBOX_ERROR,
                       f"prepare: {type(exc).__name__}: {exc}", timings)
    timings["prepare_time"] = time.monotonic() - started
    if trace is not None:
        trace.add("prepare", started, ok=True)

    cfg = agent_config_for(env, task, cfg)
    try:
        local, offered = task_toolset(env, task, sandbox, cfg.tools, cfg.tool_limits, tools)
        schemas = describe_tools(offered, cfg.tool_limits)
        # The parser accepts exactly the tools this task offers.
        limits = dataclasses.replace(cfg.parse_limits, known_tools=tool_names(schemas))
        conversation = policy.open(env.messages(task), schemas, task)
        # Routed by schema: tmux in the slot, external tools to the tool server.
        toolbox = Toolbox(local, sandbox, cfg.tool_limits, offered,
                          server_url=cfg.tool_server_url, token_env=cfg.tool_server_token_env,
                          record=trace is not None and cfg.record_terminals)
    except Exception as exc:  # a broken task row or a template that rejects it
        log.warning("could not open a conversation for %s: %s", task.task_id, exc)
        return _failed(task, trajectory_id, Outcome.POLICY_ERROR,
                       f"open: {type(exc).__name__}: {exc}", timings)

    try:
        traj = await run_agent(conversation, sandbox, cfg, trajectory_id=trajectory_id,
                               task_id=task.task_id, tools=toolbox, parse_limits=limits,
                               trace=trace)
    finally:
        await toolbox.close()
        if trace is not None:
            trace.casts = toolbox.casts()

    if traj.outcome not in INFRA_OUTCOMES:
        started = time.monotonic()
        try:
            verdict = await env.verify(task, sandbox, transcript=traj.record.messages)
            traj.score = float(verdict.score)
            traj.metadata["verdict"] = verdict.details
        except SandboxError as exc:
            traj.score = 0.0
            traj.outcome = Outcome.SANDBOX_ERROR
            traj.error = f"verify: {exc}"
        except GradingError as exc:  # grading did not really run: no score, never a 0.0
            log.warning("grading failed for %s/%s (%s): %s", task.task_id, trajectory_id,
                        exc.kind, exc)
            traj.score = 0.0
            traj.outcome = Outcome.GRADING_ERROR
            traj.error = f"grading ({exc.kind}): {exc}"
            traj.metadata["grading_error"] = exc.kind
        except Exception as exc:  # a grader bug: a wrong reward is worse than none
            log.exception("verify failed for %s/%s", task.task_id, trajectory_id)
            traj.score = 0.0
            traj.outcome = Outcome.GRADING_ERROR
            traj.error = f"grading (grader_bug): {type(exc).__name__}: {exc}"
            traj.metadata["grading_error"] = "grader_bug"
        timings["verify_time"] = time.monotonic() - started
        if trace is not None:
            trace.add("verify", started, **verify_fields(traj.score, traj.metadata.get("verdict") or {}),
                      **({"error": traj.error} if traj.outcome in INFRA_OUTCOMES else {}))
    timings.update(llm_time=traj.llm_time, tool_time=traj.tool_time)
    traj.metadata["timings"] = timings
    traj.metadata["policy"] = getattr(policy, "name", type(policy).__name__)
    return traj


def _failed(task: Task, trajectory_id: str, outcome: Outcome, error: str,
            timings: dict[str, float]) -> Trajectory:
    return Trajectory(task_id=task.task_id, trajectory_id=trajectory_id, outcome=outcome,
                      record=TokenRecord(), score=0.0, error=error,
                      metadata={"timings": timings})
