"""The image store: root filesystems for slots, unpacked once per host, by content digest.

Modules:
- `store`: `ImageStore` (get / use / pin / unpin / trim) and `Image`, with the concurrency and
  eviction guarantees in its docstring; `sources` maps image names to local sources.
- `sources`: local sources (OCI layout dir, OCI layout tar, docker save tar) -> `ResolvedImage`.
- `registry`: references and the distribution-API client (token auth, manifest lists).
- `unpack`: applying layers safely (whiteouts, hostile-archive refusals, size caps).
- `streams`: hashing/counting readers and layer decompression.
- `oci`: media types and the typed manifest / index / config models.
- `dockerfile`: Dockerfile builds (`dockerfile:<context>`), one cached layer per step, each
  step sandboxed by sandbox_image/build_sandbox.py.
- `__main__`: `python -m sandbox_image.images import NAME ROOTFS -o LAYOUT`.
- `locks`: cancellation-safe async flock.
- `errors`: `ImageError` and its kinds.
"""

from .errors import (DigestMismatch, ImageError, ImageNotFound, PlatformNotFound, SizeLimitExceeded,
                     UnsafeArchive, UnsupportedImage)
from .oci import ContainerConfig, ImageConfig
from .registry import Reference, RegistryClient, parse_reference
from .sources import ResolvedImage, resolve_local
from .store import Image, ImageStore, StoreStats

__all__ = [
    "ContainerConfig", "DigestMismatch", "Image", "ImageConfig", "ImageError", "ImageNotFound", "ImageStore",
    "PlatformNotFound", "Reference", "RegistryClient", "ResolvedImage", "SizeLimitExceeded", "StoreStats",
    "UnsafeArchive", "UnsupportedImage", "parse_reference", "resolve_local",
]
