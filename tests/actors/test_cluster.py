"""The cluster on a real local Ray: real slot servers, real tasks, gold policy, real sinks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ray

from actors.cluster import Snapshot
from tests.actors.helpers import (
    assert_well_formed, gold_config, groups_jsonl, make_cluster, run_until_done,
    slot_server_procs, wait_for,
)
from tests.atropos_server import AtroposAPI, TestTrainer


async def test_gold_run_delivers_every_task_once_and_cleans_up(ray_local, tmp_path: Path):
    cfg = gold_config(tmp_path, max_items=4)
    cluster = make_cluster(cfg)
    max_slots_used = 0

    def tick(s: Snapshot) -> None:
        nonlocal max_slots_used
        max_slots_used = max(max_slots_used, sum(p.get("slots_in_use", 0) for p in s.pools))

    snap = await run_until_done(cluster, tick)
    groups = groups_jsonl(tmp_path)
    ids = sorted(g["task_id"] for g in groups)
    assert ids == sorted(t.task_id for t in cluster.tasks)
    for g in groups:
        assert_well_formed(g, 2)
        assert g["scores"] == [1.0, 1.0], g["group_overrides"]
        meta = g["_meta"]  # per-trajectory summaries kept for the user
        assert [m["outcome"] for m in meta] == ["done", "done"]
        assert all(m["grading"] == "all tests passed" and m["turns"] >= 2 for m in meta)
    assert snap.queue["completed"] == 4
    assert snap.pools and all(p["slots_in_use"] == 0 for p in snap.pools) and snap.queue["dropped"] == 0
    assert snap.sink["delivered"] == 4 and snap.sink["pending"] == 0
    assert max_slots_used >= 1
    # Teardown left nothing: no actors of the run, no slot servers.
    live = [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(cluster.run_id)]
    assert live == []
    assert slot_server_procs() == []


async def test_killed_worker_tasks_are_released_and_run_completes(ray_local, tmp_path: Path):
    cfg = gold_config(tmp_path, "workers.num=2", "workers.groups_in_flight=1",
                      "backend.max_hosts=1", max_items=4)
    cluster = make_cluster(cfg)
    await cluster.start()
    killed: list[str] = []

    async def kill_a_busy_worker() -> None:
        # Kill a worker while it holds a lease (its group is in flight).
        await wait_for(lambda: cluster.snapshot.queue.get("leased", 0) > 0, 60, "a lease")
        wid, worker = next(iter(cluster.workers.items()))
        ray.kill(worker, no_restart=True)
        killed.append(wid)

    killer = asyncio.create_task(kill_a_busy_worker())
    snap = await cluster.run(tick=0.2)
    await killer
    assert killed and snap.worker_restarts >= 1
    ids = [g["task_id"] for g in groups_jsonl(tmp_path)]
    assert sorted(set(ids)) == sorted(t.task_id for t in cluster.tasks)
    assert len(ids) == len(set(ids)), "a task was delivered twice"
    assert snap.queue["completed"] + snap.queue["dropped"] == 4
    assert snap.queue["pending"] == 0 and snap.queue["leased"] == 0
    # The dead worker's slots were freed, not leaked.
    assert snap.pools and all(p["slots_in_use"] == 0 for p in snap.pools)


async def test_pacing_stops_starting_groups_and_resumes(ray_local, tmp_path: Path):
    api = AtroposAPI(log_dir=tmp_path)
    api.start()
    try:
        trainer = TestTrainer(api.url, batch_size=2)
        trainer.start()
        cfg = gold_config(
            tmp_path, "trainer=atropos", f"trainer.url={api.url}", "trainer.status_interval=0.1",
            "trainer.register_poll=0.1", "env.max_batches_offpolicy=1", "workers.num=1",
            "workers.groups_in_flight=1", max_items=5,
        )
        cluster = make_cluster(cfg)
        stalls: list[dict] = []
        max_queue = 0

        def tick(s: Snapshot) -> None:
            nonlocal max_queue
            max_queue = max(max_queue, s.sink.get("trainer_queue") or 0)
            if (s.sink.get("paused") and s.queue.get("leased") == 0
                    and s.queue.get("pending", 0) > 0 and s.sink.get("pending") == 0):
                stalls.append(dict(s.queue))

        await cluster.start()
        run = asyncio.create_task(cluster.run(on_tick=tick, tick=0.1))
        # With nobody pulling, one queued group (2 sequences = 1 batch) fills the trainer's
        # allowance: the cluster finishes what it started and then starts nothing new.
        await wait_for(lambda: stalls, 120, "the cluster to stall on a full trainer queue")
        assert stalls[0]["completed"] < 5
        # The trainer pulls again: work resumes and every task arrives.
        while not run.done():
            await asyncio.to_thread(trainer.pull)
            await asyncio.sleep(0.1)
        snap = await run
        while await asyncio.to_thread(trainer.pull):
            pass
        got = trainer.groups()
        assert sorted(g["group_overrides"]["task_id"] for g in got) == sorted(
            t.task_id for t in cluster.tasks)
        for g in got:
            assert_well_formed(g, 2)
        assert snap.queue["dropped"] == 0
        # In flight never exceeded one group beyond the allowance (1 worker x 1 group).
        assert max_queue <= 2
    finally:
        api.stop()


async def test_api_outage_and_relaunch_resend_outbox_and_resume_cursor(ray_local, tmp_path: Path):
    api = AtroposAPI(log_dir=tmp_path)
    api.start()
    try:
        trainer = TestTrainer(api.url, batch_size=2)
        trainer.start()
        common = ("trainer=atropos", f"trainer.url={api.url}", "trainer.status_interval=0.1",
                  "trainer.register_poll=0.1", "trainer.retry_backoff=0.05",
                  "env.max_batches_offpolicy=100", "workers.num=1", "workers.groups_in_flight=1",
                  "run.max_groups=3", "run.shutdown_grace=3")
        first = make_cluster(gold_config(tmp_path, *common, max_items=6))
        await first.start()
        run = asyncio.create_task(first.run(tick=0.1))
        await wait_for(lambda: first.snapshot.sink.get("delivered", 0) >= 1, 120, "a delivery")
        api.stop()  # the API goes down mid-run; groups wait in the outbox
        await wait_for(lambda: first.snapshot.sink.get("pending", 0) >= 1, 120,
                       "a group waiting in the outbox")
        snap1 = await run  # max_groups=3: the run ends with the API still down
        assert snap1.queue["completed"] == 3
        left = snap1.sink["pending"]
        assert left >= 1
        delivered_before = snap1.sink["delivered"]

        api.start()  # a fresh API: it forgot everything; the trainer registers again
        trainer2 = TestTrainer(api.url, batch_size=2)
        trainer2.start()
        second = make_cluster(gold_config(tmp_path, *common, max_items=6))
        snap2 = await run_until_done(second)
        while trainer2.pull():
            pass
        got = [g["group_overrides"]["task_id"] for g in trainer2.groups()]
        # The first run's outbox leftovers, then the next 3 tasks of the cursor.
        assert len(got) == len(set(got)) == left + 3
        # Across both runs every task was delivered exactly once (groups.jsonl is written
        # at delivery; groups the dead API held are lost with it, not by us).
        ids = [g["task_id"] for g in groups_jsonl(tmp_path)]
        assert sorted(ids) == sorted(t.task_id for t in second.tasks)
        assert delivered_before + len(got) == len(ids)
        assert snap2.queue["completed"] == 6  # the cursor carries the first run's 3
    finally:
        api.stop()
