"""Hostile layers: refused with an error naming the member, nothing written outside the store,
no image (not even a partial one) left visible."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from sandbox_image.images import ImageStore, SizeLimitExceeded, UnsafeArchive

from .build import Device, Fifo, File, _info, build_oci_layout, raw_layer


def member(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, link: str = "",
           mode: int = 0o644, size: int | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = _info(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if data is not None else 0
    if size is not None:
        info.size = size
    return info, data


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the store that a hostile layer aims at; it must stay as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_text("original")
    return d


def assert_contained(store: ImageStore, outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "original"
    assert store.images() == []
    assert os.listdir(store.root / "tmp") == []  # the partial unpack is gone too
    assert os.listdir(store.root / "images") == []


def layer(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    return raw_layer(list(members))


def cases(outside: Path) -> dict[str, tuple[list[bytes], str]]:
    """name -> (layers, member the error must name)."""
    o = str(outside)
    return {
        "absolute path": ([layer(member(f"{o}/victim", b"pwned"))], f"{o}/victim"),
        "dotdot": ([layer(member("a/../../../outside/victim", b"pwned"))], "a/../../../outside/victim"),
        "write through symlink": ([layer(member("link", kind=tarfile.SYMTYPE, link=o),
                                         member("link/victim", b"pwned"))], "link/victim"),
        "mkdir through symlink": ([layer(member("link", kind=tarfile.SYMTYPE, link=o),
                                         member("link/newdir", kind=tarfile.DIRTYPE, mode=0o755))], "link/newdir"),
        "relative symlink escape": ([layer(member("up", kind=tarfile.SYMTYPE, link="../" * 12 + o.lstrip("/")),
                                           member("up/victim", b"pwned"))], "up/victim"),
        "symlink in a lower layer": ([layer(member("etc", kind=tarfile.SYMTYPE, link=o)),
                                      layer(member("etc/victim", b"pwned"))], "etc/victim"),
        "symlink replacing a dir": ([layer(member("d", kind=tarfile.DIRTYPE, mode=0o755),
                                           member("d", kind=tarfile.SYMTYPE, link=o),
                                           member("d/victim", b"pwned"))], "d/victim"),
        "hard link to absolute target": ([layer(member("h", kind=tarfile.LNKTYPE, link=f"{o}/victim"))], "h"),
        "hard link with dotdot": ([layer(member("h", kind=tarfile.LNKTYPE, link="../../outside/victim"))], "h"),
        "hard link through symlink": ([layer(member("l", kind=tarfile.SYMTYPE, link=o),
                                             member("h", kind=tarfile.LNKTYPE, link="l/victim"))], "h"),
        "whiteout of dotdot": ([layer(member("f", b"x")), layer(member(".wh...", b""))], ".wh..."),
        "file at the rootfs itself": ([layer(member(".", b"x"))], "."),
    }


CASES = ["absolute path", "dotdot", "write through symlink", "mkdir through symlink", "relative symlink escape",
         "symlink in a lower layer", "symlink replacing a dir", "hard link to absolute target",
         "hard link with dotdot", "hard link through symlink", "whiteout of dotdot", "file at the rootfs itself"]


@pytest.mark.parametrize("case", CASES)
async def test_hostile_layer_refused(case: str, store: ImageStore, tmp_path: Path, outside: Path) -> None:
    layers, named = cases(outside)[case]
    built = build_oci_layout(tmp_path / "img", layers, compress="gzip")
    with pytest.raises(UnsafeArchive) as err:
        await store.get(built.path)
    assert repr(named) in str(err.value)
    assert_contained(store, outside)


async def test_rewriting_a_hard_link_does_not_write_through_it(store: ImageStore, tmp_path: Path) -> None:
    layers = [layer(member("f", b"original")), layer(member("h", kind=tarfile.LNKTYPE, link="f"),
                                                   member("h", b"replaced"))]
    root = (await store.get(build_oci_layout(tmp_path / "img", layers).path)).rootfs
    assert (root / "f").read_bytes() == b"original" and (root / "h").read_bytes() == b"replaced"


async def test_devices_and_fifos_are_skipped(store: ImageStore, tmp_path: Path) -> None:
    lay = {"dev/mem": Device("char", 1, 1), "dev/sda": Device("block", 8, 0), "run/fifo": Fifo(),
           "dev/mem-link": File(b"")}
    built = build_oci_layout(tmp_path / "img", [lay, layer(member("dev/hl", kind=tarfile.LNKTYPE, link="dev/mem"))])
    image = await store.get(built.path)
    assert sorted(image.skipped) == ["dev/mem", "dev/sda", "run/fifo"]
    assert sorted(os.listdir(image.rootfs / "dev")) == ["mem-link"]  # the link to a skipped node is skipped too
    assert os.listdir(image.rootfs / "run") == []


async def test_a_10gb_size_claim_is_refused_before_writing(tmp_path: Path, outside: Path) -> None:
    info, _ = member("big", size=10 << 30)
    header = info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 4096  # claims 10 GB, carries 4 KB
    built = build_oci_layout(tmp_path / "img", [layer(member("small", b"s")), header])
    store = ImageStore(tmp_path / "store", max_bytes=1 << 30)
    try:
        with pytest.raises(SizeLimitExceeded, match="'big'"):
            await store.get(built.path)
        assert_contained(store, outside)
    finally:
        await store.close()


async def test_bytes_written_are_capped_per_image(tmp_path: Path, outside: Path) -> None:
    blob = os.urandom(400_000)
    layers = [{"a": blob, "b": blob}, {"c": blob}]  # each layer alone fits; together they do not
    store = ImageStore(tmp_path / "store", max_bytes=1 << 30, max_image_bytes=1_000_000)
    try:
        with pytest.raises(SizeLimitExceeded, match="'c'"):
            await store.get(build_oci_layout(tmp_path / "img", layers).path)
        assert_contained(store, outside)
    finally:
        await store.close()


async def test_entries_are_capped_per_image(tmp_path: Path, outside: Path) -> None:
    store = ImageStore(tmp_path / "store", max_bytes=1 << 30, max_entries=50)
    try:
        with pytest.raises(SizeLimitExceeded, match="50 entries"):
            await store.get(build_oci_layout(tmp_path / "img", [{f"f{i}": b"" for i in range(100)}]).path)
        assert_contained(store, outside)
    finally:
        await store.close()
