"""Local image sources: an OCI layout directory, an OCI layout tar, a `docker save` tar.

`resolve_local(path)` reads only the small documents (index, manifest, config), verifying
each against its digest, and returns a `ResolvedImage`: the config digest (the store's key),
the config, and for each layer a way to open its bytes plus the digests to check them
against while they are unpacked. Blobs are found by digest (`blobs/sha256/<hex>`) or by the
names in `manifest.json`; an archive's member names are only ever looked up, never written
anywhere, so a hostile outer archive cannot place files. Outer archives must be plain
(uncompressed) tars, as `docker save` and `skopeo copy oci-archive:` write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DigestMismatch, ImageError, ImageNotFound, UnsupportedImage
from .oci import (Descriptor, ImageConfig, Index, Manifest, check_digest, host_platform,
                  parse_json, parse_manifest_or_index, select_platform, sha256_digest, verify_bytes)

_MAX_INDEX_DEPTH = 4
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class LayerBlob:
    """One layer: how to open its (possibly compressed) bytes, and what they must hash to."""

    name: str  # for messages
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]
    digest: str | None  # of the bytes as stored (None: unknown, e.g. a legacy docker save layer)
    size: int | None
    diff_id: str | None  # of the uncompressed tar, from the config
    media_type: str = ""


@dataclass(frozen=True)
class ResolvedImage:
    digest: str  # config digest: the image id and the store's key
    config: ImageConfig
    config_bytes: bytes
    layers: tuple[LayerBlob, ...]
    source: str
    manifest_digest: str | None = None


class _Blobs:
    """Read access to the files of a layout or archive, by relative path."""

    def read(self, path: str, limit: int) -> bytes:
        raise NotImplementedError

    def open(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError


class _DirBlobs(_Blobs):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts or path.startswith("/"):
            raise ImageError(f"{self.root}: refusing blob path {path!r}")
        return self.root.joinpath(*parts)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def read(self, path: str, limit: int) -> bytes:
        with open(self._path(path), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.root}/{path}: over {limit} bytes")
        return data

    def open(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return open(self._path(path), "rb")


class _Slice:
    """A read-only window [offset, offset+size) of a file."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self._f = f
        self._left = size
        f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


class _TarBlobs(_Blobs):
    """Members of a plain tar, located once (name -> data offset, size); links followed
    inside the archive (docker save links identical layers to one copy)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, mode="r:") as tf:
                for m in tf:
                    self._members[posixpath.normpath(m.name.lstrip("/"))] = m
        except tarfile.ReadError as e:
            if _is_compressed(path):
                raise UnsupportedImage(
                    f"{path} is a compressed archive; decompress it first (e.g. `gunzip`): "
                    "the store reads blobs from a plain tar by offset") from None
            raise ImageError(f"{path} is not a readable tar archive: {e}") from None

    def _member(self, path: str) -> tarfile.TarInfo:
        name = posixpath.normpath(path)
        for _ in range(8):
            m = self._members.get(name)
            if m is None:
                raise ImageNotFound(f"{self.path}: no member {path!r}")
            if m.isreg():
                return m
            if m.issym():
                name = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            elif m.islnk():
                name = posixpath.normpath(m.linkname.lstrip("/"))
            else:
                raise ImageError(f"{self.path}: member {path!r} is not a file")
        raise ImageError(f"{self.path}: member {path!r}: too many links")

    def exists(self, path: str) -> bool:
        try:
            self._member(path)
            return True
        except ImageNotFound:
            return False

    def read(self, path: str, limit: int) -> bytes:
        m = self._member(path)
        if m.size > limit:
            raise ImageError(f"{self.path}: member {path!r} is over {limit} bytes")
        with open(self.path, "rb") as f:
            return _Slice(f, m.offset_data, m.size).read()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[BinaryIO]:
        m = self._member(path)
        with open(self.path, "rb") as f:
            yield _Slice(f, m.offset_data, m.size)  # type: ignore[misc]


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ"))


def _blob_path(digest: str) -> str:
    algo, hexpart = check_digest(digest).split(":", 1)
    return f"blobs/{algo}/{hexpart}"


_METADATA_LIMIT = 4 << 20


def _read_blob(blobs: _Blobs, d: Descriptor, what: str) -> bytes:
    try:
        data = blobs.read(_blob_path(d.digest), _METADATA_LIMIT)
    except FileNotFoundError:
        raise ImageNotFound(f"{what} {d.digest} is missing from the layout") from None
    if len(data) != d.size:
        raise DigestMismatch(f"{what} {d.digest}: {len(data)} bytes, descriptor says {d.size}")
    return verify_bytes(data, d.digest, f"{what} {d.digest}")


def _check_platform(config: ImageConfig, want: tuple[str, str], source: str) -> None:
    if config.architecture and (config.os or "linux", config.architecture) != want:
        raise UnsupportedImage(
            f"{source} is a {config.os}/{config.architecture} image; this store serves {want[0]}/{want[1]}")


def _choose(index: Index, selector: str | None, want: tuple[str, str], what: str) -> Descriptor:
    entries = index.manifests
    if selector is not None:
        entries = [d for d in entries
                   if selector in (d.annotations.get(_REF_NAME), d.annotations.get(_CONTAINERD_NAME), d.digest)]
        if not entries:
            names = sorted({d.annotations.get(_REF_NAME, "") for d in index.manifests} - {""})
            raise ImageNotFound(f"{what} has no image named {selector!r} (it has: {', '.join(names) or 'no names'})")
    if not entries:
        raise ImageNotFound(f"{what} lists no manifests")
    if len(entries) == 1:
        return entries[0]
    return select_platform(Index(manifests=entries), want, what)


def _resolve_oci(blobs: _Blobs, source: str, selector: str | None, want: tuple[str, str]) -> ResolvedImage:
    layout = parse_json(blobs.read("oci-layout", _METADATA_LIMIT), f"{source}: oci-layout")
    if not str(layout.get("imageLayoutVersion", "")).startswith("1."):
        raise UnsupportedImage(f"{source}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}")
    doc = parse_manifest_or_index(blobs.read("index.json", _METADATA_LIMIT), "", f"{source}: index.json")
    if not isinstance(doc, Index):
        raise ImageError(f"{source}: index.json is not an image index")
    desc = _choose(doc, selector, want, f"{source}: index.json")
    for _ in range(_MAX_INDEX_DEPTH):
        data = _read_blob(blobs, desc, f"{source}: manifest")
        node = parse_manifest_or_index(data, desc.media_type, f"{source}: manifest {desc.digest}")
        if isinstance(node, Manifest):
            return _from_manifest(blobs, node, desc.digest, source, want)
        desc = _choose(node, None, want, f"{source}: index {desc.digest}")
    raise ImageError(f"{source}: indexes nested more than {_MAX_INDEX_DEPTH} deep")


def _from_manifest(blobs: _Blobs, manifest: Manifest, manifest_digest: str, source: str,
                   want: tuple[str, str]) -> ResolvedImage:
    config_bytes = _read_blob(blobs, manifest.config, f"{source}: config")
    config = ImageConfig.model_validate_json_tolerant(config_bytes)
    _check_platform(config, want, source)
    # The store keys images by config digest, so the config must commit to the layers: every
    # layer is checked against its diff_id, and a config without them is refused.
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise ImageError(f"{source}: manifest has {len(manifest.layers)} layers, config lists {len(diff_ids)} "
                         "rootfs.diff_ids; the config must name every layer")
    layers = []
    for i, d in enumerate(manifest.layers):
        if d.media_type and "tar" not in d.media_type:
            raise UnsupportedImage(f"{source}: layer {d.digest} has media type {d.media_type!r}, not a tar layer")
        path = _blob_path(d.digest)
        if not blobs.exists(path):
            raise ImageNotFound(f"{source}: layer {d.digest} is missing from the layout")
        layers.append(LayerBlob(name=f"{source}: layer {i} ({d.digest})", open=_opener(blobs, path),
                                digest=d.digest, size=d.size,
                                diff_id=check_digest(diff_ids[i]), media_type=d.media_type))
    return ResolvedImage(digest=manifest.config.digest, config=config, config_bytes=config_bytes,
                         layers=tuple(layers), source=source, manifest_digest=manifest_digest)


def _opener(blobs: _Blobs, path: str) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    return lambda: blobs.open(path)


def _resolve_docker(blobs: _TarBlobs, source: str, selector: str | None, want: tuple[str, str]) -> ResolvedImage:
    try:
        entries = json.loads(blobs.read("manifest.json", _METADATA_LIMIT))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(f"{source}: manifest.json is not valid JSON: {e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ImageError(f"{source}: manifest.json is not a list of images")
    tags = [str(t) for e in entries for t in (e.get("RepoTags") or [])]
    if selector is not None:
        entries = [e for e in entries if selector in (e.get("RepoTags") or [])]
    if len(entries) != 1:
        path = split_selector(source)[0]
        raise ImageNotFound(f"{source}: {'no' if not entries else len(entries)} images match; "
                            f"name one as {path}#<repo:tag> (tags: {', '.join(tags) or 'none'})")
    entry = entries[0]
    config_name = str(entry.get("Config", ""))
    config_bytes = blobs.read(config_name, _METADATA_LIMIT)
    digest = sha256_digest(config_bytes)
    named = posixpath.basename(config_name).removesuffix(".json")
    if len(named) == 64 and named != digest.split(":", 1)[1]:
        raise DigestMismatch(f"{source}: config {config_name!r} hashes to {digest}")
    config = ImageConfig.model_validate_json_tolerant(config_bytes)
    _check_platform(config, want, source)
    names = [str(n) for n in entry.get("Layers") or []]
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(names):
        raise ImageError(f"{source}: manifest.json lists {len(names)} layers, config lists {len(diff_ids)} diff_ids")
    layers = []
    for i, name in enumerate(names):
        if not blobs.exists(name):
            raise ImageNotFound(f"{source}: layer {name!r} is missing from the archive")
        parts = name.split("/")
        by_digest = f"sha256:{parts[2]}" if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] else None
        layers.append(LayerBlob(name=f"{source}: layer {i} ({name})", open=_opener(blobs, name),
                                digest=by_digest, size=None, diff_id=check_digest(diff_ids[i])))
    return ResolvedImage(digest=digest, config=config, config_bytes=config_bytes, layers=tuple(layers),
                         source=source)


def split_selector(ref: str) -> tuple[str, str | None]:
    """`/path/img.tar#name` -> (`/path/img.tar`, `name`): picks one image of a multi-image
    layout (by ref name annotation) or docker save archive (by RepoTag)."""
    path, sep, selector = ref.partition("#")
    return path, (selector if sep else None)


def resolve_local(ref: str | os.PathLike[str], platform: tuple[str, str] | None = None) -> ResolvedImage:
    """Resolve an OCI layout directory, OCI layout tar or docker save tar (blocking I/O:
    call it from a thread)."""
    path_text, selector = split_selector(os.fspath(ref))
    path = Path(path_text)
    want = platform or host_platform()
    source = str(path) + (f"#{selector}" if selector else "")
    if path.is_dir():
        if not (path / "oci-layout").exists():
            raise ImageNotFound(f"{path} is a directory without an oci-layout file; not an OCI image layout")
        return _resolve_oci(_DirBlobs(path), source, selector, want)
    if not path.is_file():
        raise ImageNotFound(f"{path}: no such image layout or archive")
    blobs = _TarBlobs(path)
    if blobs.exists("oci-layout") and blobs.exists("index.json"):
        return _resolve_oci(blobs, source, selector, want)
    if blobs.exists("manifest.json"):
        return _resolve_docker(blobs, source, selector, want)
    raise UnsupportedImage(f"{path}: a tar with neither oci-layout/index.json nor manifest.json; "
                           "not an OCI layout or docker save archive")
