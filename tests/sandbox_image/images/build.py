"""Build real OCI image layouts and `docker save` archives from files, for tests.

    layers = [host_binaries("sh", "ls") | {"etc/motd": b"hi\\n"}, {"etc/.wh.motd": WHITEOUT}]
    built = build_oci_layout(tmp / "img", layers, config={"Env": ["A=1"]})
    built.digest  # the config digest: what the image store keys the unpacked rootfs by

A layer is a mapping path -> entry (bytes, `File`, `Dir`, `Symlink`, `Hardlink`, `Device`,
`Fifo`, or a host `Path` whose content is copied), or ready-made tar bytes (`raw_layer` builds
those from arbitrary TarInfo, for hostile archives). Missing parent directories are added.
Everything is deterministic (fixed mtimes, owners), so equal inputs give equal digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MTIME = 1_700_000_000
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass(frozen=True)
class File:
    data: bytes | Path
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str


@dataclass(frozen=True)
class Device:
    kind: str = "char"  # or "block"
    major: int = 1
    minor: int = 3


@dataclass(frozen=True)
class Fifo:
    pass


WHITEOUT = b""  # the content of a `.wh.<name>` or `.wh..wh..opq` marker
OPAQUE = ".wh..wh..opq"
Entry = bytes | Path | File | Dir | Symlink | Hardlink | Device | Fifo


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _member(name: str, entry: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    info = _info(name)
    if isinstance(entry, (bytes, Path)):
        entry = File(entry, 0o755 if isinstance(entry, Path) and os.access(entry, os.X_OK) else 0o644)
    if isinstance(entry, File):
        data = entry.data.read_bytes() if isinstance(entry.data, Path) else entry.data
        info.size, info.mode = len(data), entry.mode
        return info, data
    if isinstance(entry, Dir):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    elif isinstance(entry, Symlink):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
    elif isinstance(entry, Hardlink):
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, entry.target, 0o644
    elif isinstance(entry, Device):
        info.type = tarfile.CHRTYPE if entry.kind == "char" else tarfile.BLKTYPE
        info.devmajor, info.devminor, info.mode = entry.major, entry.minor, 0o666
    elif isinstance(entry, Fifo):
        info.type, info.mode = tarfile.FIFOTYPE, 0o644
    else:
        raise TypeError(f"{name}: unknown entry {entry!r}")
    return info, None


def raw_layer(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar of exactly these members, in this order (no parents added, nothing checked)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def layer_tar(entries: Mapping[str, Entry]) -> bytes:
    """A layer tar of `entries` in order, each preceded by its missing parent directories."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    emitted: set[str] = set()

    def emit(path: str) -> None:
        if path in emitted:
            return
        emitted.add(path)
        members.append(_member(path, entries.get(path, Dir())))

    for path in entries:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            emit("/".join(parts[:i]))
        emit(path)
    return raw_layer(members)


# -- files from this machine ---------------------------------------------------------------

def host_files(*paths: str) -> dict[str, Entry]:
    """Entries that reproduce host `paths` inside an image: every symlink met on the way
    (merged-usr `bin -> usr/bin`, `/lib64/ld-linux...so.2 -> /lib/...`) is recreated with its
    target as written, and the file at the end is copied."""
    entries: dict[str, Entry] = {}
    for path in paths:
        _add_host_path(entries, path, 0)
    return entries


def _add_host_path(entries: dict[str, Entry], path: str, depth: int) -> None:
    if depth > 16:
        raise ValueError(f"{path}: symlink loop")
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts)):
        cur = "/" + "/".join(parts[: i + 1])
        if os.path.islink(cur):
            target = os.readlink(cur)
            entries.setdefault(cur[1:], Symlink(target))
            base = target if target.startswith("/") else os.path.join(os.path.dirname(cur), target)
            rest = "/".join(parts[i + 1:])
            _add_host_path(entries, os.path.normpath(base + ("/" + rest if rest else "")), depth + 1)
            return
    real = "/" + "/".join(parts)
    if os.path.isdir(real):
        entries.setdefault(real[1:], Dir())
    else:
        entries.setdefault(real[1:], File(Path(real), os.stat(real).st_mode & 0o777))


def shared_libraries(binary: str) -> list[str]:
    """The absolute paths `ldd` lists for `binary` (empty for a static binary)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return sorted({m for m in re.findall(r"(/\S+)", out) if os.path.exists(m)})


def host_binaries(*names: str) -> dict[str, Entry]:
    """Host executables (found on PATH, or absolute) with their shared libraries."""
    paths: list[str] = []
    for name in names:
        exe = name if name.startswith("/") else shutil.which(name)
        if exe is None:
            raise FileNotFoundError(f"{name}: not on PATH")
        paths += [exe, *shared_libraries(os.path.realpath(exe))]
    return host_files(*paths)


# -- layouts and archives ------------------------------------------------------------------

@dataclass
class BuiltImage:
    path: Path
    digest: str  # config digest
    manifest_digest: str
    config: dict
    config_bytes: bytes
    manifest_bytes: bytes
    layer_digests: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    index_digest: str | None = None  # the multi-platform index blob, if one was built
    blobs: dict[str, bytes] = field(default_factory=dict)  # every blob by digest

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":", 1)[1]


def host_arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _image_blobs(layers: list[Mapping[str, Entry] | bytes], run_config: Mapping | None, compress: str | None,
                 arch: str) -> tuple[dict[str, bytes], bytes, dict, list[str], list[str]]:
    blobs: dict[str, bytes] = {}
    descs, diff_ids, digests = [], [], []
    for layer in layers:
        tar = layer if isinstance(layer, bytes) else layer_tar(layer)
        data = gzip.compress(tar, mtime=0) if compress == "gzip" else tar
        digest = sha256(data)
        blobs[digest] = data
        digests.append(digest)
        diff_ids.append(sha256(tar))
        descs.append({"mediaType": LAYER_GZIP if compress == "gzip" else LAYER_TAR, "digest": digest,
                      "size": len(data)})
    config = {"architecture": arch, "os": "linux",
              "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"], **(run_config or {})},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": "tests/sandbox_image/images/build.py"} for _ in layers]}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    blobs[sha256(config_bytes)] = config_bytes
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)},
                "layers": descs}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    blobs[sha256(manifest_bytes)] = manifest_bytes
    return blobs, manifest_bytes, config, digests, diff_ids


def build_oci_layout(dest: Path, layers: list[Mapping[str, Entry] | bytes], config: Mapping | None = None, *,
                     compress: str | None = "gzip", other_platforms: tuple[str, ...] = (),
                     nested_index: bool = False, ref_name: str | None = "latest") -> BuiltImage:
    """Write an OCI image layout at `dest` (created). `config` is the run config (Env, Cmd,
    WorkingDir, User, Entrypoint, ...). `other_platforms` (architectures, e.g. "arm64") adds a
    real one-layer image for each, so the index is a multi-platform manifest list; with
    `nested_index` the layout's index.json points at an image index blob holding them."""
    arch = host_arch()
    blobs, manifest_bytes, config_doc, digests, diff_ids = _image_blobs(layers, config, compress, arch)
    entries = [{"mediaType": OCI_MANIFEST, "digest": sha256(manifest_bytes), "size": len(manifest_bytes),
                "platform": {"os": "linux", "architecture": arch}}]
    for other in other_platforms:
        b, m, _, _, _ = _image_blobs([{f"{other}.txt": other.encode()}], None, compress, other)
        blobs.update(b)
        entries.insert(0, {"mediaType": OCI_MANIFEST, "digest": sha256(m), "size": len(m),
                           "platform": {"os": "linux", "architecture": other}})
    index_digest = None
    if nested_index:
        inner = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                           sort_keys=True).encode()
        index_digest = sha256(inner)
        blobs[index_digest] = inner
        entries = [{"mediaType": OCI_INDEX, "digest": index_digest, "size": len(inner)}]
    if ref_name:
        for e in entries:
            e["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (dest / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_text(json.dumps(top, sort_keys=True))
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    return BuiltImage(dest, sha256(config_bytes), sha256(manifest_bytes), config_doc, config_bytes, manifest_bytes,
                      digests, diff_ids, index_digest, blobs)


def tar_directory(src: Path, dest_tar: Path) -> Path:
    """A plain tar of the tree at `src` (as `skopeo copy oci-archive:` writes a layout)."""
    with tarfile.open(dest_tar, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest_tar


def build_oci_archive(dest_tar: Path, layers: list[Mapping[str, Entry] | bytes], config: Mapping | None = None,
                      **kwargs: object) -> BuiltImage:
    layout = dest_tar.with_name(dest_tar.name + ".layout")
    built = build_oci_layout(layout, layers, config, **kwargs)  # type: ignore[arg-type]
    tar_directory(layout, dest_tar)
    shutil.rmtree(layout)
    built.path = dest_tar
    return built


def build_docker_save(dest_tar: Path, layers: list[Mapping[str, Entry] | bytes], config: Mapping | None = None,
                      repo_tag: str = "test/image:latest", link_duplicates: bool = True) -> BuiltImage:
    """A `docker save` archive (image v1.2 layout: `<id>/layer.tar`, `<config hex>.json`,
    `manifest.json`, `repositories`). Uncompressed layers, as docker writes them; a layer
    identical to an earlier one is a symlink to it, as docker does."""
    tars = [layer if isinstance(layer, bytes) else layer_tar(layer) for layer in layers]
    blobs, manifest_bytes, config_doc, _, diff_ids = _image_blobs(tars, config, None, host_arch())
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    config_hex = sha256(config_bytes).split(":", 1)[1]
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    names, seen = [], {}
    for tar, diff_id in zip(tars, diff_ids):
        layer_id = hashlib.sha256(diff_id.encode() + str(len(names)).encode()).hexdigest()
        members.append((_dir_info(layer_id), None))
        name = f"{layer_id}/layer.tar"
        if link_duplicates and diff_id in seen:
            info = _info(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"../{seen[diff_id]}"
            members.append((info, None))
        else:
            members.append(_member(name, File(tar)))
            seen[diff_id] = name
        members.append(_member(f"{layer_id}/VERSION", File(b"1.0")))
        names.append(name)
    members.append(_member(f"{config_hex}.json", File(config_bytes)))
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": names}]
    members.append(_member("manifest.json", File(json.dumps(manifest).encode())))
    repo, _, tag = repo_tag.rpartition(":")
    members.append(_member("repositories", File(json.dumps({repo: {tag: names[-1].split('/')[0]}}).encode())))
    dest_tar.write_bytes(raw_layer(members))
    return BuiltImage(dest_tar, sha256(config_bytes), sha256(manifest_bytes), config_doc, config_bytes,
                      manifest_bytes, [], diff_ids, None, blobs)


def _dir_info(name: str) -> tarfile.TarInfo:
    info = _info(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info
