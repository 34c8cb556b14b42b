"""A slot container in an image has a writable root, as a Docker container does: writes
anywhere (/usr, /etc) land in the slot's own upper layer on its disk, the image's files are
owned by root inside (the image store keeps them owned by the host's 0; an idmapped mount
shows them to the slot), and a reset drops every change."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from rollout.sandbox.client import SlotServerClient

from ..conftest import running_server
from .build import BuiltImage


async def test_the_root_is_writable_and_a_reset_drops_the_changes(sh_image: BuiltImage,
                                                                  tmp_path: Path) -> None:
    gen = running_server("slot-root-", "--slots", "1", "--isolation", "required",
                         "--image-store", str(tmp_path / "store"))
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, srv.url, srv.token)
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
    finally:
        next(gen, None)
    # The image store's copy was never touched.
    motds = list((tmp_path / "store").rglob("etc/motd"))
    assert motds and all(m.read_text() == "hello from the test image\n" for m in motds)
