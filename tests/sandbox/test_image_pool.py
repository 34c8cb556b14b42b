"""Slots of several images on one slot server, through the real pool: a free slot moves to
the image an acquire asks for (a reset into it), two images run at once on one host, each
slot's workdir is private and restored from its image on reset, and an image that cannot be
had is a clear SandboxError that costs no slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rollout.sandbox import SlotPool
from rollout.types import SandboxError
from tests.sandbox.conftest import local_pool
from tests.sandbox_image.images.build import Dir, build_oci_layout, host_binaries, host_files


def tiny_image(dest: Path, name: str) -> Path:
    layer = {
        **host_files("/bin", "/lib", "/lib64"),
        **host_binaries("sh", "cat", "ls", "rm", "sleep"),
        "proc": Dir(), "dev": Dir(), "tmp": Dir(0o1777),
        "etc/which": name.encode(),
        "testbed/marker": f"{name} original\n".encode(),
    }
    return build_oci_layout(dest, [layer], {"Env": ["PATH=/usr/bin:/bin", f"IMAGE={name}"]}).path


def image_pool(tmp_path: Path, **settings) -> SlotPool:
    """A local pool with a store of its own and small slot limits."""
    return local_pool(image_store=str(tmp_path / "store"), memory_mb=512, pids=256, **settings)


@pytest.fixture
def images(tmp_path) -> dict:
    return {name: {"source": f"oci:{tiny_image(tmp_path / name, name)}"} for name in ("a", "b")}


async def test_two_images_share_one_host_and_reset_restores_each(images, tmp_path) -> None:
    pool = image_pool(tmp_path, min_hosts=1, max_hosts=1, slots_per_host=2, default_image="a",
                      images=images)
    await pool.start()
    try:
        a = await pool.acquire("ta", image="a")
        b = await pool.acquire("tb", image="b")  # the host's other slot, moved to image b
        assert a.host_id == b.host_id and (a.image, b.image) == ("a", "b")
        assert pool.stats()["image_moves"] == 1
        sa, sb = pool.sandbox(a), pool.sandbox(b)
        # Both run at once, each in its own root, each with its own writable /testbed.
        ra, rb = await asyncio.gather(
            sa.exec("sleep 0.5; cat /etc/which; echo \" $IMAGE\"; cat marker; pwd"),
            sb.exec("sleep 0.5; cat /etc/which; echo \" $IMAGE\"; cat marker; pwd"))
        assert ra.stdout.split() == ["a", "a", "a", "original", "/testbed"], ra
        assert rb.stdout.split() == ["b", "b", "b", "original", "/testbed"], rb
        for s in (sa, sb):
            assert (await s.exec("echo changed > marker && rm -f /etc/which; cat marker")
                    ).stdout == "changed\n"
        await pool.release(a)
        await pool.release(b)
        again = [await pool.acquire(f"t{i}", image="b") for i in range(2)]
        assert pool.stats()["image_moves"] == 2  # slot a moved to b; slot b stayed b
        for slot in again:
            r = await pool.sandbox(slot).exec("cat /etc/which; echo; cat marker")
            assert r.stdout.split() == ["b", "b", "original"], r
            await pool.release(slot)
    finally:
        await pool.stop()


async def test_an_image_that_cannot_be_had_is_a_clear_error_and_costs_no_slot(
        images, tmp_path) -> None:
    pool = image_pool(tmp_path, min_hosts=1, max_hosts=1, slots_per_host=1, default_image="a",
                      images={**images, "gone": {"source": f"oci:{tmp_path}/no-such-layout"}})
    await pool.start()
    try:
        with pytest.raises(SandboxError, match="cannot run image 'gone'.*no-such-layout"):
            await pool.acquire("t1", image="gone", timeout=30)
        assert pool.stats()["slots_free"] == 1
        async with pool.session("t2", image="a") as sb:  # the slot is fine and still image a
            assert (await sb.exec("cat /etc/which")).stdout == "a"
    finally:
        await pool.stop()


async def test_without_mixing_each_image_gets_its_own_host(images, tmp_path) -> None:
    pool = image_pool(tmp_path, min_hosts=0, max_hosts=2, slots_per_host=2, mix_images=False,
                      images=images)
    await pool.start()
    try:
        a = await pool.acquire("ta", image="a")
        b = await pool.acquire("tb", image="b")
        assert a.host_id != b.host_id and pool.stats()["image_moves"] == 0
        assert (await pool.sandbox(b).exec("cat /etc/which")).stdout == "b"
        await pool.release(a)
        await pool.release(b)
    finally:
        await pool.stop()


async def test_an_acquire_cancelled_mid_move_gives_the_slot_back(images, tmp_path) -> None:
    pool = image_pool(tmp_path, min_hosts=1, max_hosts=1, slots_per_host=1, default_image="a",
                      images=images)
    await pool.start()
    try:
        (hs,) = pool.fleet.hosts.values()
        moving = asyncio.ensure_future(pool.acquire("t1", image="b", timeout=30))
        # The slot is reserved (busy) but not leased while it moves to image b.
        deadline = asyncio.get_running_loop().time() + 30
        while not (hs.busy == 1 and hs.leases[0] is None) and not moving.done():
            assert asyncio.get_running_loop().time() < deadline, "the move never began"
            await asyncio.sleep(0.001)
        moving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await moving
        slot = await pool.acquire("t2", image="b", timeout=30)  # the slot came back
        assert (await pool.sandbox(slot).exec("cat /etc/which")).stdout == "b"
        await pool.release(slot)
    finally:
        await pool.stop()
