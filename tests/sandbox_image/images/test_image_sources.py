"""Base images without a registry: a root filesystem (a directory or a tarball) imported as
a named OCI image, and `sources` mapping names to local images, used by `FROM` and by task
images alike (a mapped name never reaches its registry)."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from sandbox_image.images import ImageStore
from sandbox_image.images.__main__ import main as images_cli
from sandbox_image.images.dockerfile import DockerfileBuilder

from .build import BuiltImage, build_docker_save
from .conftest import base_layer


@pytest.fixture
async def rootfs(store: ImageStore, sh_image: BuiltImage, tmp_path: Path) -> Path:
    """A plain root filesystem directory (what debootstrap leaves), copied from an image."""
    image = await store.get(sh_image.path)
    out = tmp_path / "rootfs"
    shutil.copytree(image.rootfs, out, symlinks=True)
    return out


async def test_an_imported_rootfs_is_what_from_names(rootfs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    layout = tmp_path / "images"
    assert images_cli(["import", "ubuntu:22.04", str(rootfs), "-o", str(layout)]) == 0
    tarball = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(rootfs, arcname=".")
    assert images_cli(["import", "debian:12", str(tarball), "-o", str(layout)]) == 0
    assert "sandbox.image_sources=" in capsys.readouterr().out
    sources = {"ubuntu:22.04": f"{layout}#ubuntu:22.04", "debian:12": f"{layout}#debian:12"}
    store = ImageStore(tmp_path / "store2", max_bytes=1 << 30, sources=sources)
    try:
        ubuntu = await store.get("ubuntu:22.04")
        assert (await store.get("docker.io/library/ubuntu:22.04")).digest == ubuntu.digest
        assert (ubuntu.rootfs / "etc" / "motd").read_text() == (rootfs / "etc" / "motd").read_text()
        assert ubuntu.config.cmd == ["/bin/sh"]
        debian = await store.get("debian:12")
        assert debian.digest != ubuntu.digest and (debian.rootfs / "etc" / "motd").exists()
        if shutil.which("bwrap") and os.geteuid() == 0:
            ctx = tmp_path / "ctx"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text("FROM ubuntu:22.04\nRUN echo offline > /built.txt\n")
            builder = DockerfileBuilder(store, store.root, bwrap="bwrap", network=False,
                                        run_timeout=60)
            async with store.use(f"oci:{await builder.build(ctx)}") as built:
                assert (built.rootfs / "built.txt").read_text() == "offline\n"
    finally:
        await store.close()


async def test_a_task_image_name_maps_to_a_docker_save_archive(tmp_path: Path) -> None:
    archive = build_docker_save(tmp_path / "app.tar", [base_layer()], {"Cmd": ["/bin/sh"]},
                                repo_tag="myorg/app:1")
    store = ImageStore(tmp_path / "store", max_bytes=1 << 30,
                       sources={"registry.example.com/myorg/app:1": str(archive.path)})
    try:
        image = await store.get("registry.example.com/myorg/app:1")
        assert image.digest == archive.digest
    finally:
        await store.close()


def test_import_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert images_cli(["import", "x:1", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    assert images_cli(["import", "x:1", str(tmp_path / "junk.tar"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "is not a tar archive" in err
