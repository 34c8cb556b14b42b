"""A sharded (remote-style) backend on a real local Ray: two shards, two images, one quota."""

from __future__ import annotations

import asyncio

from actors.slot_source import shard_of
from actors.sandbox_pool import ActorSandbox, HostQuotaActor, SandboxPool
from rollout.sandbox import SlotLimits
from tests.sandbox.seam_backends import SlowShardedConfig, read_events


def _two_images_on_two_shards() -> tuple[str, str]:
    names = [f"registry.test/repo-{i}:v1" for i in range(20)]
    a = names[0]
    b = next(n for n in names if shard_of(n, 2) != shard_of(a, 2))
    return a, b


async def test_acquires_land_on_their_images_shard_and_hosts_stay_within_quota(
        ray_local, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    cfg = SlowShardedConfig(min_hosts=0, max_hosts=3, slots_per_host=1, delay_before=0.05,
                            delay_after=0.05, fail_rate=0.0, events=str(events),
                            idle_scale_down=0, health_check_interval=0.2)
    quota = HostQuotaActor.remote(cfg.max_hosts)
    shards = [SandboxPool.remote(cfg, SlotLimits(memory_mb=512, pids=256), f"shard{i}", quota)
              for i in range(2)]
    await asyncio.gather(*(s.start.remote() for s in shards))
    images = _two_images_on_two_shards()
    seen: list[tuple[str, str, int]] = []  # (host id, image asked for, shard)

    async def trajectory(n: int) -> None:
        image = images[n % 2]
        shard = shard_of(image, 2)
        pool = shards[shard]
        slot = await pool.acquire.remote(f"t{n}", image, 120.0)
        try:
            seen.append((slot.host_id, image, shard))
            assert (await ActorSandbox(pool, slot).exec(f"echo {n}")).stdout == f"{n}\n"
        finally:
            await pool.release.remote(slot)

    try:
        await asyncio.gather(*(trajectory(n) for n in range(24)))
        stats = await quota.stats.remote()
    finally:
        await asyncio.gather(*(s.stop.remote() for s in shards))
    log = read_events(events)
    started = {e["host"]: (e["image"], e["run"]) for e in log if e["event"] == "started"}
    assert len(seen) == 24
    for host_id, image, shard in seen:
        assert started[host_id] == (image, f"shard{shard}")
    assert {shard for _, _, shard in seen} == {0, 1}
    # The global quota: hosts alive at once across both shards (server up .. stopped).
    timeline = sorted([(e["t"], 1) for e in log if e["event"] == "server"]
                      + [(e["t"], -1) for e in log if e["event"] == "stop"])
    alive = peak = 0
    for _, step in timeline:
        alive += step
        peak = max(peak, alive)
    assert 2 <= peak <= cfg.max_hosts
    assert stats["peak"] <= cfg.max_hosts
