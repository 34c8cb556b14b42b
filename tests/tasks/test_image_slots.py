"""Bundled tasks in a real OCI image (built from this machine's files: python3.11, git, a
shell, pytest in a conda-style env, a repo with its full history at /testbed), through the
real pool, slot servers, image store and bubblewrap: import, unpack, run, prepare, grade.

- every bundled instance: gold -> 1.0, no change -> 0.0, graded with the image's python;
- what a slot can read: nothing of the host, and no git history holding a fix.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest
import pytest_asyncio

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks.loader import BUNDLED_DIR
from rollout.tasks.config import default_cache_dir
from tests.sandbox_image.images.python_image import build_python_image, clone_testbed
# The same task env and tasks as the host-view acceptance test (module-scoped fixtures).
from tests.tasks.test_swe_smith_slots import IMAGE, apply_gold, env, tasks  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="module")
SLOTS = 3
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("python-image")
    bundle = next(BUNDLED_DIR.glob("rollout__tinycalc.*.bundle"))
    testbed = clone_testbed(bundle, root / "testbed-src")
    built = build_python_image(root / "layout", testbed)
    return built.path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-store")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(image_layout, store):
    p = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=SLOTS, default_image=IMAGE,
                    image_store=str(store), start_timeout=240),
        SlotLimits(isolation="required", images={IMAGE: {"source": f"oci:{image_layout}"}}))
    await p.start()
    yield p
    await p.stop()


@pytest.mark.timeout(900)
async def test_an_instance_of_every_bundled_repo_scores_gold_and_no_change_in_the_image(
        pool, env, tasks):  # noqa: F811
    # Every instance is graded gold and no change in plain slots
    # (tests/tasks/test_swe_smith_slots.py); here what differs is the image (its interpreter
    # prefix, its writable root), which an instance of each repo exercises.
    per_repo: dict[str, list] = {}
    for t in tasks:
        per_repo.setdefault(t.data["repo"], []).append(t)
    assert len(per_repo) >= 5
    tasks = [group[0] for group in per_repo.values()]
    sem = asyncio.Semaphore(SLOTS)

    async def run(task, gold: bool):
        async with sem, pool.session(f"{task.task_id}:{gold}", image=task.image) as sb:
            await env.prepare(task, sb)
            if gold:
                await apply_gold(env, task, sb)
            return task, gold, await env.verify(task, sb)

    results = await asyncio.gather(*(run(t, g) for t in tasks for g in (True, False)))
    wrong = [(t.task_id, gold, v.score, v.details["reason"]) for t, gold, v in results
             if v.score != (1.0 if gold else 0.0)]
    assert not wrong, wrong
    stats = pool.stats()
    assert stats["host_failures"] == 0 and stats["images"][IMAGE]["hosts"] == 1


async def test_slots_run_in_the_image_with_its_python(pool):
    (hs,) = pool.fleet.hosts.values()
    health = await hs.client.health()
    (slot_image, *_) = health["slot_images"]
    assert slot_image["label"] == IMAGE and slot_image["digest"].startswith("sha256:")
    # A slot container's whole root is the writable overlay (/testbed is part of it).
    assert health["containers"] is True
    assert slot_image["workdir"] == "/testbed" and slot_image["writable"] == "root"
    async with pool.session("which", image=IMAGE) as sb:
        r = await sb.exec("pwd; command -v python; python -c 'import sys; print(sys.prefix)'; "
                          "ls /")
    lines = r.stdout.split()
    assert lines[:3] == ["/testbed", "/opt/miniconda3/envs/testbed/bin/python",
                         "/opt/miniconda3/envs/testbed"], r
    assert "work" not in lines and "home" not in lines, r.stdout


async def test_nothing_of_the_host_and_no_fix_is_readable_from_a_prepared_slot(pool, env, tasks):  # noqa: F811
    task = next(t for t in tasks if "tinycalc" in t.data["repo"])  # the repo the image holds
    (hs,) = pool.fleet.hosts.values()
    data_dir = Path(hs.host.meta["log"]).parent
    probes = [str(PROJECT), str(PROJECT / "rollout/tasks/bundled"), str(BUNDLED_DIR),
              default_cache_dir(), env.cfg.cache_dir, str(data_dir), str(data_dir / "token"),
              "/root/.ssh", "/root/.cache", "/home", "/work", "/tmp/ci-venv", "/etc/shadow"]
    async with pool.session("probe", image=task.image) as sb:
        await env.prepare(task, sb)
        for path in probes:
            r = await sb.exec(f"ls -A {shlex.quote(path)} 2>/dev/null; "
                              f"cat {shlex.quote(path)} 2>/dev/null")
            assert r.stdout == "", f"{path} is visible in the slot: {r.stdout[:200]}"
        # The image's /testbed history (its main branch is the clean code) is gone: the only
        # repository a slot can reach is the one prepare made, with one commit.
        r = await sb.exec(
            "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o "
            "-name HEAD -type f -print 2>/dev/null | while read -r f; do "
            "d=$(dirname \"$f\"); [ -d \"$d/objects\" ] && echo \"$d\"; done", timeout=300)
        assert r.stdout.split() == ["/testbed/.git"], r.stdout[:500]
        log = await sb.exec("git log --all --format=%s")
        assert log.stdout.split() == ["Initial", "state"], log
        # The untracked build product of the image is kept (an editable install needs it).
        kept = await sb.exec("cat build.egg-info/PKG-INFO")
        assert "Name: testbed" in kept.stdout, kept
        # What the agent sees is the instance's tree, not the image's clean one.
        diff = await sb.exec(f"printf %s {shlex.quote(task.data['patch'])} | git apply -R --check")
        assert diff.ok, diff


async def test_reset_restores_the_image_workdir(pool):
    first = [await pool.acquire(f"dirty-{i}", image=IMAGE) for i in range(SLOTS)]
    try:
        for slot in first:
            r = await pool.sandbox(slot).exec("git log --oneline --all | wc -l; rm -rf tinycalc .git; "
                                      "echo x > new; ls")
            assert int(r.stdout.split()[0]) > 1 and r.stdout.split()[1:] == [
                "build.egg-info", "new", "tests"], r
    finally:
        for slot in first:
            await pool.release(slot)
    again = [await pool.acquire(f"clean-{i}", image=IMAGE) for i in range(SLOTS)]
    try:
        assert {(s.host_id, s.index) for s in again} == {(s.host_id, s.index) for s in first}
        for slot in again:
            r = await pool.sandbox(slot).exec("ls; test -e new && echo dirty; git log --oneline --all | wc -l")
            assert r.stdout.split()[:3] == ["build.egg-info", "tests", "tinycalc"], r
            assert "dirty" not in r.stdout and int(r.stdout.split()[-1]) > 1, r
    finally:
        for slot in again:
            await pool.release(slot)
