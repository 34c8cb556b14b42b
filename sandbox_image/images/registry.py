"""Pull images with the OCI distribution API (aiohttp) into an OCI layout directory.

`RegistryClient.resolve(ref)` fetches the manifest (from a manifest list / index it picks the
store's platform) and the config, verifying both against their digests; `download()` then
fetches the layers, verifying each digest and size as it streams to disk, and writes an OCI
layout the local source reader unpacks. Auth: on a 401 with `WWW-Authenticate: Bearer
realm=...,service=...,scope=...` the client gets a token from the realm (with basic
credentials if configured for that registry) and retries once; `Basic` challenges are
answered with the configured credentials. Docker Hub names get `library/` and its API host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .errors import DigestMismatch, ImageError, ImageNotFound, SizeLimitExceeded
from .oci import (ACCEPT, MAX_METADATA_BYTES, Descriptor, Index, Manifest, check_digest, host_platform,
                  parse_manifest_or_index, select_platform, sha256_digest, verify_bytes)

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "https://registry-1.docker.io"
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port], e.g. docker.io, ghcr.io, localhost:5000
    repository: str  # e.g. library/python, org/img
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse_reference(text: str) -> Reference:
    """`python:3.11`, `docker.io/library/python:3.11`, `ghcr.io/org/img:tag`,
    `host:port/name@sha256:...` (Docker's rules: the first component is a registry if it has
    a `.` or `:` or is `localhost`; Docker Hub's one-component names live under `library/`)."""
    rest, _, digest = text.partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, maybe_tag
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _NAME.match(path):
        raise ImageError(f"image reference {text!r}: invalid repository name {path!r}")
    if tag is not None and not _TAG.match(tag):
        raise ImageError(f"image reference {text!r}: invalid tag {tag!r}")
    if digest:
        check_digest(digest)
    return Reference(registry, path, tag if tag or digest else "latest", digest or None)


@dataclass(frozen=True)
class RemoteImage:
    reference: Reference
    manifest_digest: str
    manifest_bytes: bytes
    manifest_media_type: str
    manifest: Manifest
    config_bytes: bytes

    @property
    def config_digest(self) -> str:
        return self.manifest.config.digest


def _default_endpoint(registry: str) -> str:
    if registry == DOCKER_HUB:
        return DOCKER_HUB_API
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    local = host in ("localhost", "[::1]") or host.startswith("127.")
    return f"{'http' if local else 'https'}://{registry}"


class RegistryClient:
    """A distribution-API client. `endpoints` maps a registry name to its base URL (a mirror,
    or a test server); `credentials` maps a registry name to (user, password)."""

    def __init__(self, *, endpoints: Mapping[str, str] | None = None,
                 credentials: Mapping[str, tuple[str, str]] | None = None,
                 platform: tuple[str, str] | None = None, timeout: float = 600.0,
                 parallel_layers: int = 3) -> None:
        self.endpoints = dict(endpoints or {})
        self.credentials = dict(credentials or {})
        self.platform = platform or host_platform()
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_read=60)
        self._parallel = parallel_layers
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[tuple[str, str], str] = {}  # (registry, repository) -> Authorization

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _base(self, ref: Reference) -> str:
        return self.endpoints.get(ref.registry, _default_endpoint(ref.registry)).rstrip("/")

    # -- HTTP with auth ------------------------------------------------------------------

    async def _get(self, ref: Reference, path: str, accept: str | None = None) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self._base(ref)}/v2/{ref.repository}/{path}"
        headers = {"Accept": accept} if accept else {}
        key = (ref.registry, ref.repository)
        for attempt in range(2):
            if key in self._auth:
                headers["Authorization"] = self._auth[key]
            try:
                resp = await self._session.get(url, headers=headers)
            except aiohttp.ClientError as e:
                raise ImageError(f"registry {ref.registry}: GET {url} failed: {e}") from None
            if resp.status != 401 or attempt == 1:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            self._auth[key] = await self._authenticate(ref, challenge)
        if resp.status == 401:
            resp.release()
            raise ImageError(f"registry {ref.registry}: access to {ref.repository} denied (401) after "
                             "authenticating; check the credentials configured for it")
        if resp.status == 404:
            resp.release()
            raise ImageNotFound(f"registry {ref.registry}: {ref.repository}/{path} not found (404)")
        if resp.status != 200:
            body = (await resp.read())[:300]
            resp.release()
            raise ImageError(f"registry {ref.registry}: GET {url} answered {resp.status}: {body!r}")
        return resp

    async def _authenticate(self, ref: Reference, challenge: str) -> str:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        creds = self.credentials.get(ref.registry)
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else None
        if scheme.lower() == "basic":
            if basic is None:
                raise ImageError(f"registry {ref.registry} wants a user and password; none configured for it")
            return basic
        if scheme.lower() != "bearer" or "realm" not in params:
            raise ImageError(f"registry {ref.registry}: unsupported auth challenge {challenge!r}")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{ref.repository}:pull")
        assert self._session is not None
        try:
            headers = {"Authorization": basic} if basic else {}
            async with self._session.get(params["realm"], params=query, headers=headers) as resp:
                if resp.status != 200:
                    raise ImageError(f"registry {ref.registry}: token endpoint {params['realm']} answered "
                                     f"{resp.status}; check the credentials configured for it")
                doc = json.loads(await resp.content.read(MAX_METADATA_BYTES))
        except (aiohttp.ClientError, ValueError) as e:
            raise ImageError(f"registry {ref.registry}: token request to {params['realm']} failed: {e}") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token:
            raise ImageError(f"registry {ref.registry}: token endpoint gave no token")
        return f"Bearer {token}"

    async def _small(self, ref: Reference, path: str, accept: str | None = None) -> tuple[bytes, str, str]:
        """Body (capped), content type, and Docker-Content-Digest header of a small document."""
        resp = await self._get(ref, path, accept)
        try:
            body = await resp.content.read(MAX_METADATA_BYTES + 1)
        finally:
            resp.release()
        if len(body) > MAX_METADATA_BYTES:
            raise ImageError(f"registry {ref.registry}: {path} is over {MAX_METADATA_BYTES} bytes")
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return body, ctype, resp.headers.get("Docker-Content-Digest", "")

    # -- resolve and download ------------------------------------------------------------

    async def resolve(self, ref: Reference) -> RemoteImage:
        """Manifest (for this platform) and config, both verified."""
        what = str(ref)
        body, ctype, header_digest = await self._small(ref, f"manifests/{ref.ref}", ", ".join(ACCEPT))
        if ref.digest:
            digest = ref.digest
            verify_bytes(body, digest, f"{what}: manifest")
        else:
            digest = sha256_digest(body)
        if header_digest and header_digest != digest:
            raise DigestMismatch(f"{what}: manifest hashes to {digest}, registry says {header_digest}")
        node = parse_manifest_or_index(body, ctype, f"{what}: manifest")
        if isinstance(node, Index):
            entry = select_platform(node, self.platform, f"{what}: manifest list")
            digest = check_digest(entry.digest)
            body, ctype, _ = await self._small(ref, f"manifests/{digest}", ", ".join(ACCEPT))
            verify_bytes(body, digest, f"{what}: manifest {digest}")
            node = parse_manifest_or_index(body, ctype or entry.media_type, f"{what}: manifest {digest}")
            if not isinstance(node, Manifest):
                raise ImageError(f"{what}: manifest list entry {digest} is not an image manifest")
        config_bytes, _, _ = await self._small(ref, f"blobs/{node.config.digest}")
        verify_bytes(config_bytes, node.config.digest, f"{what}: config")
        if len(config_bytes) != node.config.size:
            raise DigestMismatch(f"{what}: config is {len(config_bytes)} bytes, manifest says {node.config.size}")
        media_type = node.media_type or ctype
        return RemoteImage(ref, digest, body, media_type, node, config_bytes)

    async def download(self, remote: RemoteImage, layout: Path, max_bytes: int) -> None:
        """Write `remote` as an OCI layout at `layout` (created), fetching every layer."""
        declared = sum(d.size for d in remote.manifest.layers)
        if declared > max_bytes:
            raise SizeLimitExceeded(f"{remote.reference}: layers total {declared} bytes, over the cap of {max_bytes}")
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (blobs / remote.manifest_digest.split(":", 1)[1]).write_bytes(remote.manifest_bytes)
        (blobs / remote.config_digest.split(":", 1)[1]).write_bytes(remote.config_bytes)
        limit = asyncio.Semaphore(self._parallel)

        async def one(d: Descriptor) -> None:
            async with limit:
                await self._blob(remote.reference, d, blobs)

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the other downloads
                for d in remote.manifest.layers:
                    group.create_task(one(d))
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        os_name, arch = self.platform
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": remote.manifest_media_type, "digest": remote.manifest_digest,
                                "size": len(remote.manifest_bytes),
                                "platform": {"os": os_name, "architecture": arch}}]}
        (layout / "index.json").write_text(json.dumps(index))

    async def _blob(self, ref: Reference, d: Descriptor, blobs: Path) -> None:
        hexpart = check_digest(d.digest).split(":", 1)[1]
        final = blobs / hexpart
        if final.exists():
            return  # the same layer twice in one manifest
        part = blobs / f".{hexpart}.{secrets.token_hex(4)}"
        resp = await self._get(ref, f"blobs/{d.digest}")
        h = hashlib.sha256()
        n = 0
        try:
            with open(part, "wb") as f:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    n += len(chunk)
                    if n > d.size:
                        raise DigestMismatch(f"{ref}: layer {d.digest} is longer than its declared {d.size} bytes")
                    h.update(chunk)
                    f.write(chunk)
            actual = "sha256:" + h.hexdigest()
            if n != d.size or actual != d.digest:
                raise DigestMismatch(f"{ref}: layer {d.digest}: got {n} bytes hashing to {actual} "
                                     f"(declared {d.size} bytes)")
            os.replace(part, final)
        except aiohttp.ClientError as e:
            raise ImageError(f"{ref}: downloading layer {d.digest} failed: {e}") from None
        finally:
            resp.release()
            if part.exists():
                part.unlink()
        log.debug("registry: fetched %s of %s (%d bytes)", d.digest, ref, n)
