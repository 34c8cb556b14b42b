"""The Dockerfile builder: a Dockerfile with RUN/COPY/ENV/WORKDIR builds once, is reused from
the cache, and refuses a failing RUN with the line and the reason; a slot server runs slots in
it, and starts the CMD of a service image in each slot (test_build.py has the rest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest

from rollout.sandbox.client import ImageUnavailable, SlotServerClient
from sandbox_image.images import ImageStore
from sandbox_image.images.dockerfile import DockerfileBuilder, DockerfileError
from tests.sandbox_image.conftest import running_server

from .build import BuiltImage

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _context(tmp: Path, base: BuiltImage, *body: str) -> Path:
    ctx = tmp / "ctx"
    (ctx / "files").mkdir(parents=True, exist_ok=True)
    (ctx / "data.txt").write_text("from the context\n")
    (ctx / "files" / "a.txt").write_text("a\n")
    (ctx / "Dockerfile").write_text("\n".join([f"FROM oci:{base.path}", *body]) + "\n")
    return ctx


GOOD = ("# a comment", "USER 0", "ENV GREETING=hello OTHER=\"two words\"", "WORKDIR /srv/app",
        "COPY data.txt ./", "COPY files /srv/app/files",
        "RUN echo \"$GREETING $OTHER\" > made.txt && \\", "    cat data.txt >> made.txt",
        "RUN [\"/bin/sh\", \"-c\", \"cat /proc/self/status > /dev/null && echo json-form > j.txt\"]")


def _builder(store: ImageStore) -> DockerfileBuilder:
    return DockerfileBuilder(store, store.root, bwrap="bwrap", network=False, run_timeout=60)


async def test_builds_once_and_reuses_the_cache(store: ImageStore, sh_image: BuiltImage,
                                                tmp_path: Path) -> None:
    ctx = _context(tmp_path, sh_image, *GOOD)
    layout = await _builder(store).build(ctx)
    async with store.use(f"oci:{layout}") as image:
        app = image.rootfs / "srv" / "app"
        assert (app / "made.txt").read_text() == "hello two words\nfrom the context\n"
        assert (app / "files" / "a.txt").read_text() == "a\n"
        assert (app / "j.txt").read_text() == "json-form\n"
        assert image.working_dir == "/srv/app" and image.env["GREETING"] == "hello"
        assert (image.rootfs / "etc" / "motd").exists()  # the base is under it
    stamp = (layout / "index.json").stat().st_mtime_ns
    again = await _builder(store).build(ctx)  # a fresh builder: the cache is on disk
    assert again == layout and (layout / "index.json").stat().st_mtime_ns == stamp
    (ctx / "data.txt").write_text("changed\n")  # a COPY source changed: a new build
    assert await _builder(store).build(ctx) != layout


async def test_a_failing_run_or_an_escaping_copy_is_a_clear_error(
        store: ImageStore, sh_image: BuiltImage, tmp_path: Path) -> None:
    ctx = _context(tmp_path, sh_image, "USER 0", "RUN echo about to fail >&2; exit 3")
    with pytest.raises(DockerfileError, match=r"line 3: RUN .* failed \(exit 3\): about to fail"):
        await _builder(store).build(ctx)
    ctx = _context(tmp_path, sh_image, "COPY ../../etc/passwd /x")
    with pytest.raises(DockerfileError, match="outside the build context"):
        await _builder(store).build(ctx)
    assert not list((store.root / "builds" / "layers").glob("*/diff"))


async def test_a_slot_runs_in_the_built_image(sh_image: BuiltImage, tmp_path: Path) -> None:
    ctx = _context(tmp_path, sh_image, *GOOD)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM base\nONBUILD RUN true\n")
    gen = running_server("slot-dockerfile-", "--slots", "1", "--isolation", "required",
                         "--image-store", str(tmp_path / "store"))
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, srv.url, srv.token)
            await client.reset(0, image=f"dockerfile:{ctx}")
            r = await client.exec(0, "pwd; cat made.txt; echo $GREETING")
            assert r.ok, r.stderr
            assert r.stdout == "/srv/app\nhello two words\nfrom the context\nhello\n"
            with pytest.raises(ImageUnavailable, match="line 2: ONBUILD is not supported"):
                await client.reset(0, image=f"dockerfile:{bad}")
    finally:
        next(gen, None)


SERVICE = """\
FROM oci:{base}
WORKDIR /srv/www
RUN echo served-by-the-image-cmd > index.html
CMD ["python3", "-m", "http.server", "8123", "--bind", "127.0.0.1"]
"""

QUERY = """python3 - <<'EOF'
import time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        print(urllib.request.urlopen("http://127.0.0.1:8123/index.html").read().decode(), end="")
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
EOF"""


async def test_a_service_image_gets_its_cmd_started_in_each_slot(python_image: BuiltImage,
                                                                tmp_path: Path) -> None:
    ctx = tmp_path / "svc"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(SERVICE.format(base=python_image.path))
    gen = running_server("slot-service-", "--slots", "1", "--isolation", "required",
                         "--containers", "on", "--image-store", str(tmp_path / "store"))
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, srv.url, srv.token)
            await client.reset(0, image=f"dockerfile:{ctx}")
            r = await client.exec(0, QUERY, timeout=90)
            assert r.ok and r.stdout == "served-by-the-image-cmd\n", (r.stdout, r.stderr)
            # A reset ends it with the slot's other processes, and the fresh slot starts it again.
            await client.reset(0)
            r = await client.exec(0, QUERY, timeout=90)
            assert r.ok and r.stdout == "served-by-the-image-cmd\n", (r.stdout, r.stderr)
    finally:
        next(gen, None)
