"""Local sources: OCI layout dir, OCI layout tar, docker save tar; digests verified;
platform picked from an index; unsupported formats refused clearly."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from sandbox_image.images import (DigestMismatch, ImageError, ImageNotFound, ImageStore, PlatformNotFound, UnsupportedImage,
                                  resolve_local)

from .build import (BuiltImage, build_docker_save, build_oci_archive, build_oci_layout, layer_tar, sha256,
                    tar_directory)
from .conftest import RUN_CONFIG, base_layer, top_layer, tree


async def test_layout_dir_oci_tar_and_docker_save_unpack_alike(store: ImageStore, sh_image: BuiltImage,
                                                                tmp_path: Path) -> None:
    oci_tar = build_oci_archive(tmp_path / "img.tar", [base_layer(), top_layer()], RUN_CONFIG)
    docker = build_docker_save(tmp_path / "docker.tar", [base_layer(), top_layer()], RUN_CONFIG)
    from_dir = await store.get(sh_image.path)
    from_tar = await store.get(oci_tar.path)
    assert from_tar.digest == from_dir.digest  # same config: same image, unpacked once
    assert store.stats.unpacks == 1
    # Layer compression does not change diff_ids, so the docker save archive is the same image.
    assert docker.digest == from_dir.digest
    assert (await store.get(docker.path)).digest == from_dir.digest and store.stats.unpacks == 1
    fresh = ImageStore(tmp_path / "fresh", max_bytes=1 << 30)
    try:
        from_docker = await fresh.get(docker.path)
        assert fresh.stats.unpacks == 1
        assert tree(from_docker.rootfs) == tree(from_dir.rootfs)
        assert from_docker.env == from_dir.env and from_docker.command == from_dir.command
    finally:
        await fresh.close()


async def test_docker_save_with_linked_duplicate_layers(store: ImageStore, tmp_path: Path) -> None:
    same = {"f": b"same layer twice"}
    built = build_docker_save(tmp_path / "d.tar", [same, {"g": b"g"}, same], repo_tag="x/y:1")
    image = await store.get(f"docker-archive:{built.path}#x/y:1")
    assert sorted(p.name for p in image.rootfs.iterdir()) == ["f", "g"]
    with pytest.raises(ImageNotFound, match="x/y:1"):
        await store.get(f"{built.path}#other:tag")


async def test_uncompressed_layout_layers(store: ImageStore, tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}, {"b": b"B"}], compress=None)
    assert sorted(p.name for p in (await store.get(built.path)).rootfs.iterdir()) == ["a", "b"]


def _flip_last_content_byte(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(needle)
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


async def test_tampered_layer_is_refused(store: ImageStore, tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"payload-AAAA"}], compress=None)
    _flip_last_content_byte(built.blob_path(built.layer_digests[0]), b"payload-AAAA")  # still a valid tar
    with pytest.raises(DigestMismatch, match=built.layer_digests[0]):
        await store.get(built.path)
    assert store.images() == [] and list((store.root / "tmp").iterdir()) == []


async def test_tampered_gzip_layer_is_refused(store: ImageStore, tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}])
    other = gzip.compress(layer_tar({"a": b"B"}), mtime=0)  # a valid layer, not the one named
    built.blob_path(built.layer_digests[0]).write_bytes(other)
    with pytest.raises(DigestMismatch):
        await store.get(built.path)
    assert store.images() == []


async def test_tampered_config_and_manifest_are_refused(tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}])
    cfg = built.blob_path(built.digest)
    cfg.write_bytes(cfg.read_bytes().replace(b"/bin/sh", b"/bin/xx"))
    with pytest.raises(DigestMismatch, match="config"):
        resolve_local(built.path)
    built2 = build_oci_layout(tmp_path / "img2", [{"a": b"A"}])
    man = built2.blob_path(built2.manifest_digest)
    man.write_bytes(man.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(DigestMismatch, match="manifest"):
        resolve_local(built2.path)


async def test_docker_save_layer_checked_against_diff_id(store: ImageStore, tmp_path: Path) -> None:
    built = build_docker_save(tmp_path / "d.tar", [{"a": b"payload-AAAA"}])
    _flip_last_content_byte(built.path, b"payload-AAAA")
    with pytest.raises(DigestMismatch, match="diff_id"):
        await store.get(built.path)


@pytest.mark.parametrize("nested", [False, True])
def test_index_picks_this_platform(tmp_path: Path, nested: bool) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}], other_platforms=("arm64", "s390x"),
                             nested_index=nested)
    resolved = resolve_local(built.path)
    assert resolved.digest == built.digest and resolved.manifest_digest == built.manifest_digest
    with pytest.raises(PlatformNotFound, match="linux/arm64, linux/s390x"):
        resolve_local(built.path, platform=("linux", "riscv64"))


def test_image_of_another_architecture_is_refused(tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}])
    with pytest.raises(UnsupportedImage, match="this store serves linux/arm64"):
        resolve_local(built.path, platform=("linux", "arm64"))


def replace_layer_blob(built: BuiltImage, data: bytes, media_type: str) -> None:
    """Swap the first layer for `data` (a correctly named blob), rewriting manifest and index."""
    built.blob_path(built.layer_digests[0]).unlink()
    built.blob_path(sha256(data)).write_bytes(data)
    manifest = json.loads(built.manifest_bytes)
    manifest["layers"][0].update(digest=sha256(data), size=len(data), mediaType=media_type)
    mbytes = json.dumps(manifest).encode()
    built.blob_path(sha256(mbytes)).write_bytes(mbytes)
    index = json.loads((built.path / "index.json").read_text())
    index["manifests"][0].update(digest=sha256(mbytes), size=len(mbytes))
    (built.path / "index.json").write_text(json.dumps(index))


async def test_zstd_layer_is_unsupported_with_a_clear_error(store: ImageStore, tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}], compress=None)
    replace_layer_blob(built, b"\x28\xb5\x2f\xfd" + b"\0" * 60, "application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(UnsupportedImage, match="zstd"):
        await store.get(built.path)
    assert store.images() == []


@pytest.mark.parametrize("cut", [0.5, 0.99])
async def test_corrupt_gzip_layer_is_refused(store: ImageStore, tmp_path: Path, cut: float) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": os.urandom(50_000)}])
    good = built.blobs[built.layer_digests[0]]
    replace_layer_blob(built, good[: int(len(good) * cut)], "application/vnd.oci.image.layer.v1.tar+gzip")
    with pytest.raises(ImageError, match="layer 0"):
        await store.get(built.path)
    assert store.images() == [] and list((store.root / "tmp").iterdir()) == []


def test_compressed_outer_archive_and_non_images_are_refused(tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}])
    plain = tar_directory(built.path, tmp_path / "img.tar")
    (tmp_path / "img.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(UnsupportedImage, match="decompress it first"):
        resolve_local(tmp_path / "img.tar.gz")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ImageNotFound, match="oci-layout"):
        resolve_local(tmp_path / "dir")
    with pytest.raises(ImageNotFound, match="no such"):
        resolve_local(tmp_path / "missing")


async def test_missing_layer_blob(store: ImageStore, tmp_path: Path) -> None:
    built = build_oci_layout(tmp_path / "img", [{"a": b"A"}])
    built.blob_path(built.layer_digests[0]).unlink()
    with pytest.raises(ImageNotFound, match="missing"):
        await store.get(built.path)
