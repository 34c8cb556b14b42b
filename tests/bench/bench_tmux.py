"""The interactive terminal's round trip against a plain terminal tool call, in one run.

    python tests/bench/bench_tmux.py [--smoke] [--n N]

One local slot (real slot server, bubblewrap, slot container), one trajectory's tools
(rollout/agent/toolbox.py). Times N calls of each, interleaved:
- terminal: the plain `terminal` tool running `echo hi` (one command of the slot);
- tmux send+capture: `tmux` action=send of `echo hi` + Enter with wait=none (keys sent, the
  screen captured in the same command: the tool's own cost);
- tmux send, wait=prompt: the same, waiting until the shell prompt is back and the screen
  stayed the same for the settle time (0.3 s): what a model usually pays per keystroke call.
Prints p50/p99 in ms and the ratios to the plain terminal call. --smoke: 5 calls each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool  # noqa: E402
from rollout.agent.toolbox import Toolbox, with_extra_tools  # noqa: E402
from rollout.agent.tools import TOOL_SCHEMAS, SandboxTools  # noqa: E402
from rollout.types import ToolCall, ToolLimits  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[round(q * (len(xs) - 1))] * 1000


async def main(n: int) -> None:
    pool = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=1),
                                SlotLimits(isolation="bwrap"))
    await pool.start()
    times: dict[str, list[float]] = {"terminal": [], "tmux send+capture": [],
                                     "tmux send, wait=prompt": []}
    calls = {
        "terminal": ToolCall("terminal", {"command": "echo hi"}, "c"),
        # wait=none is one look: `until` makes that look wait for the keys to show (on a
        # loaded machine the shell may not have echoed them yet).
        "tmux send+capture": ToolCall("tmux", {"action": "send", "keys": ["echo hi", "Enter"],
                                               "wait": "none", "until": "hi"}, "c"),
        "tmux send, wait=prompt": ToolCall("tmux", {"action": "send", "keys": ["clear; echo hi",
                                                    "Enter"], "wait": "prompt"}, "c"),
    }
    try:
        async with pool.session("bench-tmux") as sandbox:
            limits = ToolLimits()
            tools = Toolbox(SandboxTools(sandbox, limits), sandbox, limits,
                            with_extra_tools(list(TOOL_SCHEMAS), ["tmux"]))
            started = time.perf_counter()
            first = await tools.run(ToolCall("tmux", {"action": "start"}, "s"))
            start_ms = (time.perf_counter() - started) * 1000
            assert not first.is_error, first.content
            for _ in range(n):
                for name, call in calls.items():
                    t = time.perf_counter()
                    res = await tools.run(call)
                    times[name].append(time.perf_counter() - t)
                    assert not res.is_error and "hi" in res.content, res.content
            await tools.close()
    finally:
        await pool.stop()
    base = sorted(times["terminal"])[len(times["terminal"]) // 2]
    print(f"tmux session start: {start_ms:.1f} ms ({n} calls of each below)")
    for name, xs in times.items():
        med = sorted(xs)[len(xs) // 2]
        print(f"{name:24s} p50 {pct(xs, .5):7.1f} ms  p99 {pct(xs, .99):7.1f} ms  "
              f"x{med / base:.1f} of terminal")
    print("round trip: tmux send-keys + capture against a plain terminal tool call")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    asyncio.run(main(5 if args.smoke else args.n))
