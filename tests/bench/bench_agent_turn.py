"""What the agent loop adds per turn, on top of the command itself.

Per turn the loop parses the reply, runs the tools and appends the observation suffix, which
re-renders the chat template over the history (to find the suffix text) and tokenizes it.
This measures that client-side cost with the real Qwen3 tokenizer and a no-op tool executor,
at the first and the 30th turn, and compares it with the floor for one isolated command
(`bwrap ... sh -c true`), all in one run.

Run: python tests/bench/bench_agent_turn.py [--smoke]   (smoke: 3 turns, no warm-up)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.agent.loop import AgentConfig, run_agent  # noqa: E402
from rollout.policy import PolicyConfig, make_policy  # noqa: E402
from rollout.agent.tools import TOOL_SCHEMAS  # noqa: E402
from rollout.types import Task, ToolResult  # noqa: E402
from tests.agent_support import QWEN_TOKENIZER  # noqa: E402

TURNS = 3 if "--smoke" in sys.argv[1:] else 30
OUTPUT = "line of tool output\n" * 40  # ~800 chars per observation


class NoopTools:
    async def run(self, call, *, max_timeout=None):
        return ToolResult(call.call_id, call.name, OUTPUT + "[exit code: 0]")


def call_text(i: int) -> str:
    body = json.dumps({"name": "terminal", "arguments": {"command": f"grep -rn foo src/ | head -{i}"}})
    return f"Let me check step {i}.\n<tool_call>\n{body}\n</tool_call>"


async def per_turn_times() -> list[float]:
    responses = [call_text(i) for i in range(TURNS)] + ["Done."]
    policy = make_policy(PolicyConfig(type="scripted", tokenizer=QWEN_TOKENIZER, responses=responses))
    conv = policy.open([{"role": "user", "content": "Fix the bug."}], TOOL_SCHEMAS, Task("b", "bench", "x"))
    stamps: list[float] = []
    sample = conv.sample

    async def stamped(**kw):
        stamps.append(time.perf_counter())
        return await sample(**kw)

    conv.sample = stamped  # type: ignore[method-assign]
    cfg = AgentConfig(max_turns=TURNS + 1, max_context_tokens=1 << 20)
    traj = await run_agent(conv, None, cfg, trajectory_id="b", task_id="b", tools=NoopTools())  # type: ignore[arg-type]
    assert traj.turns == TURNS + 1, traj
    return [b - a for a, b in zip(stamps, stamps[1:])], len(traj.record.tokens)


def bwrap_floor(n: int = 50) -> float | None:
    if not shutil.which("bwrap"):
        return None
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-all", "--die-with-parent", "--", "sh", "-c", "true"]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(smoke: bool) -> None:
    if not smoke:
        asyncio.run(per_turn_times())  # warm-up: tokenizer load, template compile
    turns, total_tokens = asyncio.run(per_turn_times())
    first, last = statistics.median(turns[:3]), statistics.median(turns[-3:])
    floor = bwrap_floor(3 if smoke else 50)
    print(f"agent overhead per turn: first turns {first * 1e3:.2f} ms, "
          f"turn ~{TURNS} {last * 1e3:.2f} ms ({total_tokens} tokens in the record)")
    print(f"growth over {TURNS} turns (history re-render): x{last / first:.2f}")
    if floor:
        print(f"isolated command floor (bwrap sh -c true): {floor * 1e3:.2f} ms")
        print(f"overhead / floor: first turns {first / floor:.2f}, turn ~{TURNS} {last / floor:.2f}")


if __name__ == "__main__":
    main("--smoke" in sys.argv[1:])
