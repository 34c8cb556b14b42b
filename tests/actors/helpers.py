"""Shared helpers for the cluster tests: compose a config, run a cluster, inspect leftovers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from actors.cluster import RolloutCluster, Snapshot
from rollout.settings.config import LaunchConfig
from rollout.tasks import load_tasks
from tests.launch_config import compose_config, qwen_tokenizer_dir


def gold_config(run_dir: Path, *extra: str, max_items: int = 4) -> LaunchConfig:
    return compose_config([
        "conf=swe_smith", f"run.dir={run_dir}", "policy=gold",
        f"policy.tokenizer={qwen_tokenizer_dir()}", "env.group_size=2", "workers.num=2",
        f"tasks.max_items={max_items}", "backend.slots_per_host=4", "backend.max_hosts=2",
        "queue.lease_seconds=30", "workers.lease_renew_interval=2", "run.shutdown_grace=30",
        *extra,
    ])


def make_cluster(cfg: LaunchConfig) -> RolloutCluster:
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return RolloutCluster(cfg, load_tasks(cfg.tasks), run_dir)


async def run_until_done(cluster: RolloutCluster,
                         on_tick: Callable[[Snapshot], None] | None = None) -> Snapshot:
    await cluster.start()
    return await cluster.run(on_tick=on_tick, tick=0.2)


def groups_jsonl(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "groups.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slot_server_procs() -> list[psutil.Process]:
    """Slot-server processes that local Ray's actors started (descendants of this test
    process, not its own children: a session fixture's server, started by the test process
    itself, is not the cluster's)."""
    me = psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            cmd = p.cmdline()
            if "-m" in cmd and "sandbox_image" in cmd and p.ppid() != me.pid:
                out.append(p)
        except psutil.Error:
            continue
    return out


def assert_well_formed(group: dict[str, Any], group_size: int) -> None:
    assert len(group["tokens"]) == len(group["masks"]) == len(group["scores"]) == group_size
    for toks, masks, lps in zip(group["tokens"], group["masks"], group["inference_logprobs"]):
        assert len(toks) == len(masks) == len(lps) > 0
        assert all(m == -100 or m == t for t, m in zip(toks, masks))
        assert all(lp == 1.0 for m, lp in zip(masks, lps) if m == -100)
        assert any(m != -100 for m in masks), "a trajectory with no sampled tokens"


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
