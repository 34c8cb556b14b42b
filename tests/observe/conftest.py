"""One real gold run of bundled tasks shared by the observability tests: real Ray, real slot
servers, the gold policy. The tests read what it left in its run dir."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray

from tests.actors.helpers import gold_config, make_cluster, run_until_done

GOLD_TASKS = 4
GROUP_SIZE = 2


@dataclass
class GoldRun:
    run_dir: Path
    cluster: object
    snapshot: object
    ticks_seen: list[dict] = field(default_factory=list)


@pytest.fixture(scope="package")
def gold_run(tmp_path_factory) -> GoldRun:
    run_dir = tmp_path_factory.mktemp("gold-run")
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rollout",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        cfg = gold_config(run_dir, f"env.group_size={GROUP_SIZE}", max_items=GOLD_TASKS)
        cluster = make_cluster(cfg)
        snap = asyncio.run(run_until_done(cluster))
    finally:
        ray.shutdown()
    return GoldRun(run_dir=run_dir, cluster=cluster, snapshot=snap)
