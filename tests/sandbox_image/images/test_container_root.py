"""A slot container in an image has a writable root, as a Docker container does: writes
anywhere (/usr, /etc) land in the slot's own upper layer on its disk, the image's files are
owned by root inside (the image store keeps them owned by the host's 0; an idmapped mount
shows them to the slot), and a reset drops every change."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from rollout.sandbox.client import SlotServerClient

from ..conftest import running_server
from .build import BuiltImage


@contextlib.asynccontextmanager
async def one_slot(tmp_path: Path, prefix: str) -> AsyncIterator[SlotServerClient]:
    """A client of a fresh one-slot server whose image store is under tmp_path."""
    gen = running_server(prefix, "--slots", "1", "--isolation", "required",
                         "--image-store", str(tmp_path / "store"))
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            yield SlotServerClient(session, srv.url, srv.token)
    finally:
        next(gen, None)


async def test_the_root_is_writable_and_a_reset_drops_the_changes(sh_image: BuiltImage,
                                                                  tmp_path: Path) -> None:
    async with one_slot(tmp_path, "slot-root-") as client:
        source = f"oci:{sh_image.path}"
        await client.reset(0, image=source)
        r = await client.exec(0, "echo changed > /usr/x && cat /usr/x && "
                                 "echo more >> /etc/motd && cat /etc/motd && ls -ln /etc/motd")
        assert r.ok, r.stderr
        assert r.stdout.startswith("changed\nhello from the test image\nmore\n")
        # Owned by root inside: the image's file, changed through the overlay.
        assert r.stdout.split("\n")[3].split()[2:4] == ["0", "0"]
        await client.reset(0)
        r = await client.exec(0, "cat /usr/x; cat /etc/motd")
        assert "changed" not in r.stdout and r.stdout == "hello from the test image\n", r
    # The image store's copy was never touched.
    motds = list((tmp_path / "store").rglob("etc/motd"))
    assert motds and all(m.read_text() == "hello from the test image\n" for m in motds)


async def test_dockerfile_env_ld_preload_never_loads_in_a_host_process(
        sh_image: BuiltImage, tmp_path: Path, preload: tuple[str, str]) -> None:
    so, marker = preload
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM oci:{sh_image.path}\nUSER 0\n"
                                    f"ENV LD_PRELOAD={so} LD_LIBRARY_PATH={Path(so).parent}\n"
                                    "RUN cat /etc/motd > /tmp/seen\n")
    async with one_slot(tmp_path, "slot-dfenv-") as client:
        await client.reset(0, image=f"dockerfile:{ctx}")  # builds: RUN with that ENV
        r = await client.exec(0, "echo $LD_PRELOAD")
        assert r.stdout.strip() == so  # the image's Env, inside the slot
    assert not Path(marker).exists(), Path(marker).read_text()
