"""Benchmark: grading time per SWE-smith trajectory, and where it goes.

    python tests/bench/bench_grading.py [--rounds 3] [--slots 2] [--compare REV] [--smoke]

Through a real SlotPool (slot-server process, bubblewrap): for one instance of every bundled
repo, gold and no-op, `prepare` then a timed `SweSmithEnv.verify`. Each slot operation
verify makes is timed too, so the table says where grading time goes (the pytest run, the
fresh slot's reset, the checkout, the workspace export, the writes).

`--compare REV` also runs this script against the project as of git revision REV (its
files unpacked from `git archive` into a temporary directory, its own slot server
included) and prints both and the ratio: issue 26's "before and after" is
`--compare 73237b3` (grading in the agent's slot, one pytest process, no canaries).
`--code DIR` runs against the project in DIR (what --compare uses). `--smoke`: two repos,
one round, the comparison skipped (run by tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


class Timed:
    """A sandbox whose operations add their time to `spent` (by operation)."""

    def __init__(self, inner, spent: dict[str, float]) -> None:
        self._inner, self._spent = inner, spent

    def _timed(self, what: str, fn):
        async def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._spent[what] += time.perf_counter() - t0
        return call

    def __getattr__(self, name: str):
        fn = getattr(self._inner, name)
        if name == "exec":
            async def run(command, **kwargs):
                what = "exec: pytest run" if " -I -B -c " in command else "exec: other"
                return await self._timed(what, fn)(command, **kwargs)
            return run
        return self._timed(name, fn) if callable(fn) and not name.startswith("_") else fn


async def measure(rounds: int, slots: int, smoke: bool) -> dict:
    from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
    from rollout.tasks import TaskSourceConfig, load_tasks
    from rollout.tasks.swe_smith import SweSmithEnv
    try:
        from rollout.agent.tools import SandboxTools
    except ImportError:  # --compare against a revision from before rollout/agent/
        from rollout.tools import SandboxTools  # type: ignore[no-redef]

    tasks = list({t.data["repo"]: t for t in load_tasks(TaskSourceConfig())}.values())
    tasks = tasks[:2] if smoke else tasks
    env = SweSmithEnv(TaskSourceConfig(cache_dir=tempfile.mkdtemp(prefix="bench-grading-"),
                                       repo_sources=[], pytest_plugin_autoload=False))
    pool = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=slots,
                                            default_image=tasks[0].image),
                                SlotLimits(isolation="bwrap"))
    await pool.start()
    times: list[float] = []
    spent: dict[str, float] = defaultdict(float)
    scores: dict[str, list[float]] = defaultdict(list)
    sem = asyncio.Semaphore(slots)

    async def one(task, gold: bool, i: int) -> None:
        async with sem, pool.session(f"bench-grade-{i}", image=task.image) as sb:
            await env.prepare(task, sb)
            if gold:
                tools = SandboxTools(sb)
                for call in env.reference_solution(task):
                    await tools.run(call)
            t0 = time.perf_counter()
            verdict = await env.verify(task, Timed(sb, spent))
            times.append(time.perf_counter() - t0)
            scores["gold" if gold else "no-op"].append(verdict.score)

    try:
        for task in tasks:  # warm the repo cache and the memos, untimed
            await env.instance_files(task)
            await env.cache.archive(task.data["repo"], f"refs/heads/{task.task_id}")
        jobs = [(t, gold) for _ in range(rounds) for t in tasks for gold in (True, False)]
        await asyncio.gather(*(one(t, g, i) for i, (t, g) in enumerate(jobs)))
    finally:
        await pool.stop()
    return {"n": len(times), "p50": statistics.median(times), "mean": statistics.fmean(times),
            "spent": {k: v / len(times) for k, v in spent.items()},
            "scores": {k: sorted(set(v)) for k, v in scores.items()}, "repos": len(tasks)}


def show(label: str, r: dict) -> None:
    print(f"{label}: {r['n']} gradings over {r['repos']} bundled repos (gold and no-op), "
          f"scores {r['scores']}")
    print(f"  grading per trajectory: p50 {1000 * r['p50']:.0f} ms, mean {1000 * r['mean']:.0f} ms")
    for what, s in sorted(r["spent"].items(), key=lambda kv: -kv[1]):
        print(f"    {what:<22} {1000 * s:7.0f} ms per trajectory")


def run_elsewhere(code: Path, rounds: int, slots: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--code", str(code), "--rounds", str(rounds),
                           "--slots", str(slots), "--json"], cwd=code, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"the run against {code} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unpack(rev: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix=f"bench-grading-{rev[:8]}-"))
    data = subprocess.run(["git", "archive", rev], cwd=HERE, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--compare", metavar="REV")
    ap.add_argument("--code", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    rounds = 1 if args.smoke else args.rounds
    sys.path.insert(0, str(args.code or HERE))
    after = asyncio.run(measure(rounds, args.slots, args.smoke))
    if args.json:
        print(json.dumps(after))
        return
    show(f"this checkout ({HERE.name})", after)
    if args.compare and not args.smoke:
        before = run_elsewhere(unpack(args.compare), rounds, args.slots)
        show(f"at {args.compare}", before)
        print(f"ratio grading time per trajectory, this checkout / {args.compare}: "
              f"p50 {after['p50'] / before['p50']:.2f}x, mean {after['mean'] / before['mean']:.2f}x")


if __name__ == "__main__":
    main()
