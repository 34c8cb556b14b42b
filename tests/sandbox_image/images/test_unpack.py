"""Layers applied in order: whiteouts, opaque directories, symlinks kept, modes."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox_image.images import ImageStore

from .build import OPAQUE, WHITEOUT, BuiltImage, Dir, File, Hardlink, Symlink, build_oci_layout


async def test_whiteouts_and_opaque_dirs(store: ImageStore, sh_image: BuiltImage) -> None:
    image = await store.get(sh_image.path)
    root = image.rootfs
    assert (root / "etc/motd").read_bytes() == b"hello from the test image\n"
    assert not (root / "etc/gone").exists() and not (root / "etc/.wh.gone").exists()
    assert not (root / "etc/gone-dir").exists()
    assert sorted(os.listdir(root / "opt/data")) == ["kept.txt", "new.txt"]  # lower entries hidden
    assert not list(root.rglob(".wh.*"))


async def test_symlinks_with_absolute_targets_are_kept(store: ImageStore, sh_image: BuiltImage) -> None:
    root = (await store.get(sh_image.path)).rootfs
    assert os.readlink(root / "usr/bin/python-link") == "/usr/bin/dash"
    assert os.readlink(root / "bin") == os.readlink("/bin")
    assert os.readlink(root / "lib64/ld-linux-x86-64.so.2") == os.readlink("/lib64/ld-linux-x86-64.so.2")


async def test_config_is_exposed(store: ImageStore, sh_image: BuiltImage) -> None:
    image = await store.get(sh_image.path)
    assert image.digest == sh_image.digest and image.manifest_digest == sh_image.manifest_digest
    assert image.env == {"PATH": "/usr/bin:/bin", "GREETING": "hi"}
    assert (image.working_dir, image.user) == ("/opt/data", "1000:1000")
    assert image.command == ["/bin/sh", "-c", "echo ok"]


async def test_later_layers_replace_types_and_merge_dirs(store: ImageStore, tmp_path: Path) -> None:
    lower = {"a/file": b"lower", "a/dir/x": b"x", "b": b"was a file", "c": Symlink("/nowhere"), "m/keep": b"k"}
    upper = {"a/file": Dir(), "a/dir": b"now a file", "b/inside": b"b became a dir", "c": b"link replaced",
             "m/added": b"a"}
    built = build_oci_layout(tmp_path / "img", [lower, upper], compress=None)
    root = (await store.get(built.path)).rootfs
    assert (root / "a/file").is_dir() and (root / "a/dir").read_bytes() == b"now a file"
    assert (root / "b/inside").read_bytes() == b"b became a dir"
    assert not (root / "c").is_symlink() and (root / "c").read_bytes() == b"link replaced"
    assert sorted(os.listdir(root / "m")) == ["added", "keep"]  # dirs merge across layers


async def test_whiteout_never_hides_its_own_layer(store: ImageStore, tmp_path: Path) -> None:
    upper = {"d/mine": b"written first", "d/.wh.mine": WHITEOUT, f"e/{OPAQUE}": WHITEOUT, "e/sub/f": b"f"}
    built = build_oci_layout(tmp_path / "img", [{"d/x": b"x", "e/old": b"o", "e/sub/g": b"g"}, upper])
    root = (await store.get(built.path)).rootfs
    assert (root / "d/mine").read_bytes() == b"written first" and (root / "d/x").exists()
    assert sorted(os.listdir(root / "e")) == ["sub"] and os.listdir(root / "e/sub") == ["f"]


async def test_setuid_stripped_modes_and_hardlinks_kept(store: ImageStore, tmp_path: Path) -> None:
    layer = {"bin/su": File(b"#!/bin/sh\n", 0o4755), "bin/sg": File(b"x", 0o2755), "bin/plain": File(b"p", 0o640),
             "bin/su-link": Hardlink("bin/su"), "tmp": Dir(0o1777), "ro": Dir(0o555)}
    root = (await store.get(build_oci_layout(tmp_path / "img", [layer]).path)).rootfs
    assert (root / "bin/su").stat().st_mode & 0o7777 == 0o755
    assert (root / "bin/sg").stat().st_mode & 0o7777 == 0o755
    assert (root / "bin/plain").stat().st_mode & 0o7777 == 0o640
    assert (root / "bin/su-link").stat().st_ino == (root / "bin/su").stat().st_ino
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "ro").stat().st_mode & 0o7777 == 0o755  # owner-writable so the store can delete it
    assert (root / "bin/plain").stat().st_mtime == 1_700_000_000
