"""Two Ray nodes (ray.cluster_utils.Cluster): a SandboxPool on each, and both get used."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.actors.helpers import gold_config, groups_jsonl, make_cluster, run_until_done


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1},
                      connect=False)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="rollout", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


async def test_pools_on_both_nodes_are_used(two_nodes, tmp_path: Path):
    cfg = gold_config(tmp_path, "workers.num=2", "backend.slots_per_host=2",
                      "backend.max_hosts=1", max_items=4)
    cluster = make_cluster(cfg)
    acquires: dict[str, int] = {}

    def tick(snap) -> None:
        for p in snap.pools:
            acquires[p["node_id"]] = max(acquires.get(p["node_id"], 0), p.get("acquires", 0))

    snap = await run_until_done(cluster, tick)
    assert len(cluster.pools) == 2
    assert len(acquires) == 2 and all(n > 0 for n in acquires.values()), acquires
    assert snap.queue["completed"] == 4
    assert sorted(g["task_id"] for g in groups_jsonl(tmp_path)) == sorted(
        t.task_id for t in cluster.tasks)
