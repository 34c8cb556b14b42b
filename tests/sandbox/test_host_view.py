"""From inside a slot of the default (host view) image, nothing of the host leaks: the probes
a model could use to find a fix or a secret, run through the real pool and slot server."""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path

import pytest

from rollout.tasks.config import default_cache_dir
from tests.sandbox.conftest import local_pool

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def planted():
    """Secrets where users keep them, and a bare git mirror in the repo cache."""
    tag = uuid.uuid4().hex[:8]
    paths = [Path(p) for p in (f"/root/.probe-{tag}/netrc", f"/home/probe-{tag}/.ssh/id",
                               f"/opt/probe-{tag}/key", f"/srv/probe-{tag}/key",
                               f"/var/lib/probe-{tag}/key", f"/mnt/probe-{tag}/key",
                               f"/work/probe-{tag}/key")]
    cache = Path(default_cache_dir()) / f"probe__{tag}.git"
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("hunter2")
    (cache / "objects").mkdir(parents=True)
    (cache / "HEAD").write_text("ref: refs/heads/main\n")
    yield [*paths, cache]
    import shutil

    for p in [*paths, cache]:
        shutil.rmtree(p.parent if p != cache else p, ignore_errors=True)


async def test_a_slot_sees_no_host_files_and_no_git_repository(planted) -> None:
    pool = local_pool(min_hosts=1, max_hosts=1, slots_per_host=1, memory_mb=512, pids=256)
    await pool.start()
    try:
        (hs,) = pool.fleet.hosts.values()
        data_dir = Path(hs.host.meta["log"]).parent
        probes = [*map(str, planted), str(PROJECT), str(PROJECT / "rollout/tasks/bundled"),
                  default_cache_dir(), str(data_dir), str(data_dir / "token"), "/root/.ssh",
                  "/root/.cache", os.path.expanduser("~/.cache/huggingface")]
        async with pool.session("probe") as sandbox:
            for path in probes:
                r = await sandbox.exec(f"ls -d {shlex.quote(path)} 2>/dev/null; "
                                       f"cat {shlex.quote(path)} 2>/dev/null")
                assert r.stdout == "", f"{path} is visible in the slot: {r.stdout[:200]}"
            # /root shows at most the interpreter's prefix, /home and /var nothing.
            r = await sandbox.exec("ls -A /root /home /var; ls /")
            top = r.stdout.split()
            assert "work" not in top and "opt" not in top and "srv" not in top, r.stdout
            # No git repository anywhere the slot can read, but the workspace (none yet).
            r = await sandbox.exec(
                "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o "
                "-name HEAD -type f -print 2>/dev/null | while read -r f; do "
                "d=$(dirname \"$f\"); [ -d \"$d/objects\" ] && echo \"$d\"; done; echo done",
                timeout=240)
            assert r.stdout.split() == ["done"], r.stdout[:500]
            # What a grading run needs is still there.
            r = await sandbox.exec("python -c 'import sys; print(sys.version_info[0])'; "
                                   "git --version >/dev/null && echo git-ok; sh -c 'echo sh-ok'")
            assert r.stdout.split() == ["3", "git-ok", "sh-ok"], r
    finally:
        await pool.stop()
