"""Two Ray nodes (ray.cluster_utils.Cluster): a SandboxPool on each, and both get used."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.actors.helpers import gold_config, groups_jsonl, make_cluster, run_until_done


@pytest.fixture
def two_nodes():
    # No dashboard: with ray[default] installed (tests/test_ray_jobs.py needs it) the head
    # would start one, and nothing here uses it.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False}, connect=False)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="rollout", log_to_driver=True)
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


async def test_node_death_and_new_node(two_nodes, tmp_path: Path):
    """A node dies mid-run (its pool, maybe a worker, with it) and another joins: the run
    completes with every task delivered once, and the newcomer gets a pool that is used."""
    import asyncio

    from tests.actors.helpers import wait_for

    cfg = gold_config(tmp_path, "workers.num=2", "backend.slots_per_host=2",
                      "backend.max_hosts=1", "queue.max_attempts=5", "workers.acquire_timeout=30",
                      max_items=8)
    cluster = make_cluster(cfg)
    await cluster.start()
    assert len(cluster.pools) == 2
    # Hold two tasks back (the test is a lease holder like any worker) so that work is left
    # for the newcomer however fast the survivors finish the rest.
    held = await cluster.queue.lease.remote("test-holder", 2)
    assert len(held) == 2
    run = asyncio.create_task(cluster.run(tick=0.2))
    await wait_for(lambda: cluster.snapshot.sink.get("delivered", 0) >= 1, 120, "a delivery")
    victim = [n for n in two_nodes.worker_nodes][0]
    two_nodes.remove_node(victim)
    newcomer = two_nodes.add_node(num_cpus=1)
    deadline = asyncio.get_running_loop().time() + 120
    while newcomer.node_id not in cluster._pool_nodes:
        assert asyncio.get_running_loop().time() < deadline, "no pool on the new node"
        assert not await cluster.queue.renew.remote([h.lease_id for h in held])
        await asyncio.sleep(0.2)
    new_pool = cluster._pool_nodes[newcomer.node_id]
    # every worker knows the new pool before the held tasks go back (the driver tells them
    # too; telling them again here is what orders it before the give-back)
    await asyncio.gather(*[w.set_pools.remote(cluster.pools) for w in cluster.workers.values()],
                         return_exceptions=True)  # a worker on the dead node is replaced
    for h in held:
        assert await cluster.queue.give_back.remote(h.lease_id)
    snap = await run
    assert victim.node_id not in cluster._pool_nodes
    ids = [g["task_id"] for g in groups_jsonl(tmp_path)]
    assert sorted(ids) == sorted(t.task_id for t in cluster.tasks)
    assert snap.queue["dropped"] == 0
    used = [p for p in snap.pools if p["node_id"] == newcomer.node_id]
    assert used and used[0]["acquires"] > 0, snap.pools
    del new_pool
