"""OCI / Docker image metadata: media types, descriptors, manifests, indexes, the image config.

Parsed once at the edge with pydantic; everything after works on these typed models. Field
names follow the OCI image spec (and Docker's v2 schema 2, which has the same shape)."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import DigestMismatch, ImageError, PlatformNotFound, UnsupportedImage

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a registry client sends as Accept, best first.
ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_METADATA_BYTES = 4 << 20  # manifests, indexes and configs are small JSON documents


def check_digest(digest: str) -> str:
    """`digest` if it is a well-formed sha256 digest; only sha256 is supported."""
    if not _DIGEST.match(digest):
        if digest.split(":", 1)[0] not in ("sha256", digest):
            raise UnsupportedImage(f"digest {digest!r}: only sha256 digests are supported")
        raise ImageError(f"malformed digest {digest!r}")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, digest: str, what: str) -> bytes:
    actual = sha256_digest(data)
    if actual != check_digest(digest):
        raise DigestMismatch(f"{what}: content hashes to {actual}, expected {digest}")
    return data


def host_platform() -> tuple[str, str]:
    """(os, architecture) in OCI spelling for this machine."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return "linux", arch


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Platform(_Model):
    os: str = ""
    architecture: str = ""
    variant: str | None = None


class Descriptor(_Model):
    media_type: str = Field("", alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    platform: Platform | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class Manifest(_Model):
    """An image manifest (OCI or Docker v2 schema 2)."""

    media_type: str = Field("", alias="mediaType")
    config: Descriptor
    layers: list[Descriptor]


class Index(_Model):
    """An image index (OCI) or manifest list (Docker)."""

    media_type: str = Field("", alias="mediaType")
    manifests: list[Descriptor]


class ContainerConfig(_Model):
    """The part of an image config that says how to run the image."""

    env: list[str] = Field(default_factory=list, alias="Env")
    working_dir: str = Field("", alias="WorkingDir")
    user: str = Field("", alias="User")
    entrypoint: list[str] | None = Field(None, alias="Entrypoint")
    cmd: list[str] | None = Field(None, alias="Cmd")
    labels: dict[str, str] = Field(default_factory=dict, alias="Labels")

    def env_dict(self) -> dict[str, str]:
        """`Env` as a mapping (later entries win, as in Docker)."""
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


class RootFS(_Model):
    type: str = "layers"
    diff_ids: list[str] = Field(default_factory=list)


class ImageConfig(_Model):
    """The image config blob: platform, run config, and the uncompressed layer digests."""

    architecture: str = ""
    os: str = ""
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFS = Field(default_factory=RootFS)

    @classmethod
    def model_validate_json_tolerant(cls, data: bytes) -> "ImageConfig":
        # Docker writes `"Env": null` and `"config": null` freely; treat null as absent.
        doc = parse_json(data, "image config")
        if doc.get("config") is None:
            doc["config"] = {}
        doc["config"] = {k: v for k, v in doc["config"].items() if v is not None}
        return _validate(cls, doc, "image config")


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_METADATA_BYTES:
        raise ImageError(f"{what} is {len(data)} bytes; metadata over {MAX_METADATA_BYTES} is refused")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _validate(model: type[_Model], doc: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ImageError(f"{what} is malformed at {where or '<root>'}: {first['msg']}") from None


def parse_manifest_or_index(data: bytes, media_type: str, what: str) -> Manifest | Index:
    """A manifest or an index, told apart by media type (declared, or in the document)."""
    doc = parse_json(data, what)
    kind = doc.get("mediaType") or media_type
    if kind in INDEX_TYPES or (not kind and "manifests" in doc):
        return _validate(Index, doc, what)
    if kind in MANIFEST_TYPES or (not kind and "layers" in doc):
        manifest = _validate(Manifest, doc, what)
        for d in (manifest.config, *manifest.layers):
            check_digest(d.digest)
        return manifest
    raise UnsupportedImage(f"{what} has media type {kind!r}; expected one of {', '.join(ACCEPT)}")


def select_platform(index: Index, want: tuple[str, str], what: str) -> Descriptor:
    """The entry of `index` for platform `want` (os, architecture). An index whose entries
    carry no platform at all is accepted when it has exactly one entry."""
    os_name, arch = want
    matches = [d for d in index.manifests
               if d.platform is not None and d.platform.os == os_name and d.platform.architecture == arch]
    if matches:
        return matches[0]
    if len(index.manifests) == 1 and index.manifests[0].platform is None:
        return index.manifests[0]
    offered = sorted({f"{d.platform.os}/{d.platform.architecture}" for d in index.manifests if d.platform})
    raise PlatformNotFound(
        f"{what} has no manifest for {os_name}/{arch} (it offers: {', '.join(offered) or 'none'})")

