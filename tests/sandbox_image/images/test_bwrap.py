"""The unpacked test image is a runnable root filesystem: bubblewrap with it as `/`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sandbox_image.images import ImageStore

from .build import BuiltImage

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


async def test_rootfs_runs_under_bwrap(store: ImageStore, sh_image: BuiltImage) -> None:
    async with store.use(sh_image.path) as image:
        argv = ["bwrap", "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                "--unshare-all", "--die-with-parent", "--chdir", image.working_dir,
                "--clearenv", *[a for k, v in image.env.items() for a in ("--setenv", k, v)],
                "sh", "-c", "echo ok; ls /; cat /etc/motd; ls; echo $GREETING; test ! -e /work && echo no-host"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "ok"
    listing = lines[1:lines.index("hello from the test image")]
    assert sorted(listing) == ["bin", "dev", "etc", "lib", "lib64", "opt", "proc", "tmp", "usr"]
    assert lines[-4:] == ["kept.txt", "new.txt", "hi", "no-host"]
