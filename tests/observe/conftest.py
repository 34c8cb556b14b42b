"""One real gold run of bundled tasks shared by the observability tests: real Ray, real slot
servers, the gold policy. The tests read what it left in its run dir."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import ray
import yaml

from tests.actors.helpers import gold_config, make_cluster, run_until_done

GOLD_TASKS = 4
GROUP_SIZE = 2


@dataclass
class GoldRun:
    run_dir: Path
    cluster: object
    snapshot: object
    scrape: str = ""  # GET /metrics while groups were still running
    scraped_at_completed: int = -1  # tasks completed when the scrape came back


@pytest.fixture(scope="package")
def gold_run(tmp_path_factory) -> Iterator[GoldRun]:
    run_dir = tmp_path_factory.mktemp("gold-run")
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rollout",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        cfg = gold_config(run_dir, f"env.group_size={GROUP_SIZE}", "metrics.port=0",
                          "logger=wandb", "logger.log_interval=1",
                          max_items=GOLD_TASKS)
        # what launch.py writes: replay reads the run's configuration from it
        dumped = cfg.model_dump(mode="json")
        dumped.pop("extra")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dumped))
        cluster = make_cluster(cfg)
        result = GoldRun(run_dir=run_dir, cluster=cluster, snapshot=None)
        asyncio.run(_run_and_scrape(cluster, result))
    finally:
        ray.shutdown()
    yield result
    # The run's wandb service (wandb-core) lives until this process exits; end it with the
    # tests of the run, as the suite leaves no process behind.
    if (wandb := sys.modules.get("wandb")) is not None:
        wandb.teardown()


def _has_cluster_gauges(text: str) -> bool:
    return 'rollout_slots{' in text and 'rollout_hosts{' in text


async def _run_and_scrape(cluster, result: GoldRun) -> None:
    """Scrape /metrics once a group is delivered and its task completed while another is
    still in flight. The driver polls the queue before the sink, and a worker completes its
    task only after the sink took the group, so one snapshot can show a delivered group whose
    task is not completed yet: wait for both."""
    scraping: list[asyncio.Task] = []

    async def scrape() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(cluster.observer.metrics_url) as r:
                assert r.status == 200 and r.content_type == "text/plain"
                result.scrape = await r.text()
        result.scraped_at_completed = cluster.snapshot.queue.get("completed", 0)

    def tick(snap) -> None:
        completed = snap.queue.get("completed", 0)
        if scraping and (not scraping[-1].done() or _has_cluster_gauges(result.scrape)):
            return
        # Again at a later tick if the observer had not published the cluster's gauges
        # (slots, hosts) yet when the last scrape came back: it does so on its own period.
        if snap.sink.get("delivered", 0) >= 1 and 1 <= completed < GOLD_TASKS:
            scraping.append(asyncio.get_running_loop().create_task(scrape()))

    result.snapshot = await run_until_done(cluster, tick)
    await asyncio.gather(*scraping)
