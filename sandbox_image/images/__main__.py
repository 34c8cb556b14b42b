"""Image tools: `python -m sandbox_image.images import NAME ROOTFS -o LAYOUT`.

`import` turns a root filesystem (a directory, e.g. made by debootstrap, or a tarball of
one, plain or gzip/bzip2/xz) into a one-layer OCI image named NAME in the OCI layout
directory LAYOUT (created, or added to: a layout may hold several named images). Map the
name to it and `FROM NAME` and task images named NAME resolve offline:

    debootstrap --variant=minbase jammy /srv/rootfs/jammy http://archive.ubuntu.com/ubuntu
    python -m sandbox_image.images import ubuntu:22.04 /srv/rootfs/jammy -o /srv/images/ubuntu
    python launch.py ... '+sandbox.image_sources={"ubuntu:22.04": "/srv/images/ubuntu#ubuntu:22.04"}'
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import secrets
import shutil
import stat
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO

from .oci import host_platform

log = logging.getLogger(__name__)

_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_REF_NAME = "org.opencontainers.image.ref.name"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImportError_(Exception):
    """A root filesystem that cannot be imported (the message says why)."""


class _Hashing:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def _tar_dir(root: Path, out: _Hashing) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                if stat.S_ISSOCK(os.lstat(full).st_mode):
                    continue
                arc = name if rel == "." else f"{rel}/{name}"
                info = tar.gettarinfo(full, arcname=arc)
                clean(info)
                if info.isreg():
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def _open_tarball(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def import_rootfs(name: str, source: Path, layout: Path, *, cmd: list[str] | None = None,
                  env: list[str] | None = None, workdir: str = "") -> str:
    """Write `source` (a rootfs dir or tarball) as the image `name` into the OCI layout
    `layout`; returns the image's config digest."""
    if not source.exists():
        raise ImportError_(f"{source}: no such directory or file")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".import.{secrets.token_hex(6)}"
    try:
        with open(tmp, "wb") as raw:
            out = _Hashing(raw)
            if source.is_dir():
                _tar_dir(source, out)
            else:
                with _open_tarball(source) as f:
                    if not _looks_like_tar(f):
                        raise ImportError_(f"{source} is not a tar archive (plain, gzip, bzip2 or xz)")
                    shutil.copyfileobj(f, out)  # type: ignore[misc]
        layer = "sha256:" + out.h.hexdigest()
        os.replace(tmp, blobs / layer.split(":")[1])
    finally:
        if tmp.exists():
            tmp.unlink()
    os_name, arch = host_platform()
    if cmd is None:
        cmd = ["/bin/bash"] if _has(source, "bin/bash") else ["/bin/sh"]
    config = {"architecture": arch, "os": os_name,
              "config": {"Env": env or [f"PATH={_DEFAULT_PATH}"], "Cmd": cmd,
                         "WorkingDir": workdir, "Labels": {_REF_NAME: name}},
              "rootfs": {"type": "layers", "diff_ids": [layer]}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": _OCI_MANIFEST,
                "config": {"mediaType": _OCI_CONFIG, "digest": _sha(config_bytes), "size": len(config_bytes)},
                "layers": [{"mediaType": _LAYER_TAR, "digest": layer, "size": out.size}]}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    for data in (config_bytes, manifest_bytes):
        (blobs / _sha(data).split(":")[1]).write_bytes(data)
    index_path = layout / "index.json"
    index = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get(_REF_NAME) != name]
    index["manifests"].append({"mediaType": _OCI_MANIFEST, "digest": _sha(manifest_bytes),
                               "size": len(manifest_bytes), "annotations": {_REF_NAME: name}})
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    tmp_index = layout / f".index.{secrets.token_hex(4)}"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, index_path)
    return _sha(config_bytes)


def _looks_like_tar(f: BinaryIO) -> bool:
    # Reading the first header only; the stream is rewound for the copy.
    head = f.read(512)
    f.seek(0)
    return len(head) == 512 and head[257:262] == b"ustar"


def _has(source: Path, rel: str) -> bool:
    if source.is_dir():
        return os.path.lexists(source / rel)
    with _open_tarball(source) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return any(m.name.lstrip("./") == rel for m in tar)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox_image.images")
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a root filesystem (dir or tarball) -> a named OCI image")
    imp.add_argument("name", help="the image's name, e.g. ubuntu:22.04")
    imp.add_argument("rootfs", help="a root filesystem directory, or a tarball of one")
    imp.add_argument("-o", "--output", required=True, help="the OCI layout directory to write")
    imp.add_argument("--cmd", default=None, help="the image's Cmd (JSON list); default /bin/bash or /bin/sh")
    imp.add_argument("--env", action="append", default=None, metavar="KEY=VALUE",
                     help=f"the image's Env (repeatable); default PATH={_DEFAULT_PATH}")
    imp.add_argument("--workdir", default="", help="the image's WorkingDir")
    args = ap.parse_args(argv)
    try:
        cmd = json.loads(args.cmd) if args.cmd else None
        if cmd is not None and not (isinstance(cmd, list) and all(isinstance(c, str) for c in cmd)):
            raise ValueError("not a list of strings")
    except ValueError as e:
        print(f"error: --cmd must be a JSON list of strings: {e}", file=sys.stderr)
        return 2
    try:
        digest = import_rootfs(args.name, Path(args.rootfs), Path(args.output), cmd=cmd,
                               env=args.env, workdir=args.workdir)
    except (ImportError_, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.name} as {digest} into {args.output}")
    print(f'map it: sandbox.image_sources={{"{args.name}": "{Path(args.output).resolve()}#{args.name}"}}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
