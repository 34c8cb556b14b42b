"""Replay a recorded trajectory: `python -m rollout.replay runs/<id> --trajectory T`.

Re-runs the trajectory's recorded tool calls (from events.jsonl) in a fresh slot of the same
image, prepared for the same task, then grades it, and says whether the recorded score is
reproduced. This is how a suspicious reward is debugged: a score that does not reproduce
from the same actions means the grading (or what it read) was not what it seemed.

Needs only the run dir: `config.yaml` (the run's configuration, written by launch.py) and
`events.jsonl`; the task is loaded again from the configured source. Slots come from a
local SlotPool (real slot servers under bubblewrap), never from a running cluster.

Exit codes: 0 every replayed score matched, 1 a mismatch (or grading could not run), 2 a
usage error (no such run dir, trajectory or task), printed as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rollout.settings.config import ConfigError, load_config, slot_limits
from rollout.record.events import read_events
from rollout.group import LocalSlots
from rollout.sandbox import SlotPool
from rollout.tasks import load_tasks
from rollout.tasks.base import sandbox_spec_for, task_toolset
from rollout.tasks.mix import TaskEnvs
from rollout.record.casts import CastError, final_screen, parse_cast
from rollout.agent.toolbox import Toolbox
from rollout.toolserver.registry import is_external
from rollout.record.trace import Trace, TracedSandbox
from rollout.types import GradingError, SandboxError, ToolCall

log = logging.getLogger(__name__)


class ReplayError(Exception):
    """A usage problem (missing run dir, unknown trajectory): one line for the user."""


@dataclass
class ReplayResult:
    trajectory_id: str
    recorded: float | None  # None: the recorded run has no score (an infra outcome)
    replayed: float | None  # None: grading could not run in the replay
    reason: str = ""
    exit_mismatches: list[str] = field(default_factory=list)  # tool calls whose exit differed
    cast_mismatches: list[str] = field(default_factory=list)  # recordings that did not replay

    @property
    def reproduced(self) -> bool:
        return (self.recorded is not None and self.replayed == self.recorded
                and not self.cast_mismatches)

    def describe(self) -> str:
        verdict = "reproduces" if self.reproduced else "MISMATCH"
        line = (f"{self.trajectory_id}: recorded score {_score(self.recorded)}, replayed "
                f"{_score(self.replayed)} ({self.reason}): {verdict}")
        if self.exit_mismatches:
            line += "; tool exit codes differ: " + ", ".join(self.exit_mismatches)
        if self.cast_mismatches:
            line += "; recordings differ: " + "; ".join(self.cast_mismatches)
        return line


def _score(s: float | None) -> str:
    return "none" if s is None else f"{s:g}"


def recorded_calls(line: dict[str, Any]) -> list[tuple[ToolCall, int | None]]:
    """The trajectory's tool calls that ran, in order, with their recorded exit codes."""
    return [(ToolCall(name=f["name"], arguments=dict(f.get("args") or {}), call_id=f"replay-{i}"),
             f.get("exit"))
            for i, (kind, _, _, f) in enumerate(line.get("ev", []))
            if kind == "tool" and not f.get("parse_error")]


def recorded_score(line: dict[str, Any]) -> float | None:
    verify = [f for kind, _, _, f in line.get("ev", []) if kind == "verify"]
    if not verify or line.get("outcome") in ("sandbox_error", "policy_error", "grading_error"):
        return None
    return float(verify[-1]["score"])


def find(lines: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    """The line whose id is `wanted`, or the one id containing it."""
    exact = [x for x in lines if x["id"] == wanted]
    if exact:
        return exact[-1]
    partial = [x for x in lines if wanted in x["id"]]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise ReplayError(f"no trajectory {wanted!r} in events.jsonl")
    raise ReplayError(f"{wanted!r} matches {len(partial)} trajectories; give more of its id")


class Replayer:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        config = self.run_dir / "config.yaml"
        if not config.exists():
            raise ReplayError(f"{self.run_dir} has no config.yaml (is it a run dir?)")
        try:
            self.cfg = load_config(yaml.safe_load(config.read_text()) or {})
        except ConfigError as e:
            raise ReplayError(f"{config}: {e}") from None
        self.lines = list(read_events(self.run_dir))
        if not self.lines:
            raise ReplayError(f"{self.run_dir} has no recorded trajectories (events.jsonl)")
        self.envs = TaskEnvs(self.cfg.tasks)
        self._tasks: dict[str, Any] | None = None

    def task(self, task_id: str) -> Any:
        if self._tasks is None:
            self._tasks = {t.task_id: t for t in load_tasks(self.cfg.tasks)}
        if task_id not in self._tasks:
            raise ReplayError(f"task {task_id} is not in the run's task source any more")
        return self._tasks[task_id]

    async def replay(self, lines: list[dict[str, Any]]) -> list[ReplayResult]:
        for line in lines:  # every task first: a usage error before any slot starts
            self.task(line["task"])
        pool = SlotPool.from_config(self.cfg.backend, slot_limits(self.cfg))
        await pool.start()
        try:
            slots = LocalSlots(pool, self.cfg.workers.acquire_timeout)
            return list(await asyncio.gather(*(self._one(slots, line) for line in lines)))
        finally:
            await pool.stop()

    async def _one(self, slots: LocalSlots, line: dict[str, Any]) -> ReplayResult:
        """The same session as a run's (a no-slot task gets its `NoSlot` from it)."""
        task = self.task(line["task"])
        env = self.envs.for_task(task)
        async with slots.session(f"replay/{line['id']}", sandbox_spec_for(env, task)) as slot:
            return await self._run(env, task, line, slot)

    async def _run(self, env: Any, task: Any, line: dict[str, Any], slot: Any) -> ReplayResult:
        result = ReplayResult(line["id"], recorded_score(line), None)
        trace = Trace(line["id"], task.task_id)
        sandbox = TracedSandbox(slot, trace)
        try:
            await env.prepare(task, sandbox)
            agent = self.cfg.agent
            local, offered = task_toolset(env, task, sandbox, agent.tools, agent.tool_limits)
            # External tools are not replayed: they never touched the slot, and the run's
            # tool server (and its secrets) is not this process's.
            tools = Toolbox(local, sandbox, agent.tool_limits,
                            [s for s in offered if not is_external(s)], record=True)
            try:
                for call, exit_code in recorded_calls(line):
                    if call.name in {s["function"]["name"] for s in offered if is_external(s)}:
                        continue
                    trace.last_exit = None
                    await tools.run(call)
                    if trace.last_exit != exit_code and call.name != "tmux":
                        result.exit_mismatches.append(
                            f"{call.name} #{call.call_id[7:]}: {exit_code} -> {trace.last_exit}")
            finally:
                await tools.close()
            result.cast_mismatches = self._check_casts(line, tools.casts())
            verdict = await env.verify(task, sandbox, transcript=recorded_transcript(line))
            result.replayed = float(verdict.score)
            result.reason = str(verdict.details.get("reason", ""))
        except GradingError as e:
            result.reason = f"grading could not run ({e.kind}): {e}"
        except SandboxError as e:
            result.reason = f"the sandbox failed: {e}"
        return result


    def _check_casts(self, line: dict[str, Any], replayed: dict[str, str]) -> list[str]:
        """The recorded tmux cast must be a valid cast whose last screen is the replay's."""
        out = []
        for kind, name in (line.get("casts") or {}).items():
            try:
                recorded = (self.run_dir / str(name)).read_text(encoding="utf-8")
                parse_cast(recorded)
            except (OSError, CastError) as e:
                out.append(f"{kind}: the recording is unreadable ({e})")
                continue
            if kind == "tmux" and final_screen(recorded) != final_screen(replayed.get(kind, "")
                                                                           or EMPTY_CAST):
                out.append(f"{kind}: the last screen differs")
        return out


EMPTY_CAST = '{"version": 2, "width": 80, "height": 24}\n'


def recorded_transcript(line: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's turns as recorded (clipped to `trace.TEXT_CLIP`): what an env that grades
    the transcript (a final answer in the last reply) is given on replay."""
    return [{"role": "assistant", "content": f.get("text") or ""}
            for kind, _, _, f in line.get("ev", []) if kind == "turn"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rollout.replay",
        description="Re-run recorded trajectories' tool calls in fresh slots, re-grade them "
                    "and say whether the recorded scores reproduce.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--trajectory", "-t", action="append", default=[],
                        help="a trajectory id from events.jsonl (or a unique part of it); repeatable")
    parser.add_argument("--all", action="store_true", help="every recorded trajectory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if not args.run_dir.is_dir():
            raise ReplayError(f"{args.run_dir} is not a directory")
        replayer = Replayer(args.run_dir)
        if args.all:
            lines = replayer.lines
        elif args.trajectory:
            lines = [find(replayer.lines, t) for t in args.trajectory]
        else:
            raise ReplayError("name a --trajectory (see events.jsonl) or pass --all")
        results = asyncio.run(replayer.replay(lines))
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(r.describe())
    return 0 if all(r.reproduced for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
