"""256 simulated trajectories through the real cluster: a real local Ray, the real actors
(TaskQueue, RolloutWorkers, SandboxPools, TrainerSink), real slot servers with bubblewrap.
Only the model is simulated (policy=simulated, a 10 ms latency per turn)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ray

from tests.actors.helpers import (
    assert_well_formed, groups_jsonl, make_cluster, run_until_done, slot_server_procs,
)
from tests.launch_config import compose_config, qwen_tokenizer_dir

TASKS, GROUP, TURNS = 32, 8, 1


async def test_256_simulated_trajectories_each_task_once_no_slot_held(ray_local, tmp_path: Path):
    cfg = compose_config([
        "conf=swe_smith", f"run.dir={tmp_path}", "policy=simulated",
        f"policy.tokenizer={qwen_tokenizer_dir()}", "policy.simulated.latency=0.01",
        f"policy.simulated.turns={TURNS}", "policy.simulated.prepare=false",
        "policy.simulated.commands=[ls -A]", f"env.group_size={GROUP}",
        f"tasks.max_items={TASKS}", "workers.num=1", "workers.groups_in_flight=16",
        "backend.min_hosts=1", "backend.max_hosts=2", "backend.slots_per_host=32",
        "sandbox.disk_mb=null", "queue.lease_seconds=120",
    ])
    cluster = make_cluster(cfg)
    peak_in_use = 0

    def tick(snap) -> None:
        nonlocal peak_in_use
        peak_in_use = max(peak_in_use, sum(p.get("slots_in_use", 0) for p in snap.pools))

    snap = await run_until_done(cluster, tick)
    groups = groups_jsonl(tmp_path)
    delivered = Counter(g["task_id"] for g in groups)
    assert sorted(delivered) == sorted(t.task_id for t in cluster.tasks)
    assert set(delivered.values()) == {1}, "a task was delivered twice"
    trajectories = [m for g in groups for m in g["_meta"]]
    assert len(trajectories) == TASKS * GROUP == 256
    assert len({m["trajectory_id"] for m in trajectories}) == 256
    for g in groups:
        assert_well_formed(g, GROUP)
        assert set(g["scores"]) <= {0.0, 1.0}
    assert {(m["outcome"], m["turns"]) for m in trajectories} == {("done", TURNS + 1)}
    assert snap.queue["completed"] == TASKS and snap.queue["dropped"] == 0
    assert snap.queue["pending"] == 0 and snap.queue["leased"] == 0
    assert snap.sink["delivered"] == TASKS and snap.sink["pending"] == 0
    # No slot held at the end, and slots really were used concurrently.
    assert snap.pools and all(p["slots_in_use"] == 0 for p in snap.pools)
    assert sum(p["acquires"] for p in snap.pools) == sum(p["releases"] for p in snap.pools) == 256
    assert peak_in_use > 1
    live = [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(cluster.run_id)]
    assert live == [] and slot_server_procs() == []
