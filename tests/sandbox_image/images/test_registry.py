"""Pulling from a registry: a local fake registry (real aiohttp server, real manifests and
blobs from a built OCI layout) that demands bearer tokens and serves a manifest list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_image.images import (DigestMismatch, ImageError, ImageNotFound, ImageStore, PlatformNotFound,
                                  Reference, RegistryClient, parse_reference)

from .build import BuiltImage, build_oci_layout, sha256
from .conftest import RUN_CONFIG, base_layer, top_layer, tree
from .fake_registry import FakeRegistry, repo_from

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture(scope="module")
def multi_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The sh test image behind a manifest list (arm64 and amd64 entries)."""
    return build_oci_layout(tmp_path_factory.mktemp("reg") / "multi", [base_layer(), top_layer()], RUN_CONFIG,
                            other_platforms=("arm64",), nested_index=True)


@pytest.fixture
async def registry(multi_image: BuiltImage) -> AsyncIterator[FakeRegistry]:
    reg = await FakeRegistry({"org/sh": repo_from(multi_image), "library/busybox": repo_from(multi_image, "1.36")},
                             credentials=("robot", "s3cret")).start()
    yield reg
    await reg.stop()


async def make_store(root: Path, reg: FakeRegistry, creds: tuple[str, str] | None = ("robot", "s3cret"),
                     **kw: object) -> ImageStore:
    rc = RegistryClient(credentials={reg.host: creds} if creds else {}, **kw)  # type: ignore[arg-type]
    return ImageStore(root, max_bytes=1 << 30, registry=rc)


def arm64_manifest(built: BuiltImage) -> str:
    index = json.loads(built.blobs[built.index_digest])  # type: ignore[index]
    return next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "arm64")


async def test_pull_with_token_auth_and_manifest_list(tmp_path: Path, registry: FakeRegistry,
                                                      multi_image: BuiltImage, sh_image: BuiltImage) -> None:
    store = await make_store(tmp_path / "store", registry)
    local = ImageStore(tmp_path / "local", max_bytes=1 << 30)
    try:
        image = await store.get(f"{registry.host}/org/sh:latest")
        assert image.digest == multi_image.digest and image.manifest_digest == multi_image.manifest_digest
        assert image.source == f"{registry.host}/org/sh:latest"
        assert tree(image.rootfs) == tree((await local.get(sh_image.path)).rootfs)
        assert image.working_dir == "/opt/data"
        reqs = registry.requests
        assert reqs[:3] == ["manifest org/sh latest", "token repository:org/sh:pull", "manifest org/sh latest"]
        assert f"manifest org/sh {multi_image.manifest_digest}" in reqs
        assert f"manifest org/sh {arm64_manifest(multi_image)}" not in reqs
        fetched = {r.split()[-1] for r in reqs if r.startswith("blob ")}
        assert fetched == {multi_image.digest, *multi_image.layer_digests}
        assert list((store.root / "tmp").iterdir()) == []  # downloaded blobs are not kept
    finally:
        await store.close()
        await local.close()


async def test_warm_get_needs_no_registry(tmp_path: Path, registry: FakeRegistry, multi_image: BuiltImage) -> None:
    ref = f"{registry.host}/org/sh:latest"
    first = await make_store(tmp_path / "store", registry)
    image = await first.get(ref)
    await first.close()
    registry.requests.clear()
    second = await make_store(tmp_path / "store", registry)  # another process's store, same root
    try:
        assert await second.get(ref) == image and registry.requests == []
        assert await second.get(ref, refresh=True) == image  # re-resolves the tag, does not unpack
        assert "manifest org/sh latest" in registry.requests and second.stats.unpacks == 0
        assert not {r.split()[-1] for r in registry.requests} & set(multi_image.layer_digests)
    finally:
        await second.close()


async def test_pull_by_digest_and_docker_hub_names(tmp_path: Path, registry: FakeRegistry,
                                                   multi_image: BuiltImage) -> None:
    store = await make_store(tmp_path / "store", registry)
    hub = RegistryClient(endpoints={"docker.io": registry.url}, credentials={"docker.io": ("robot", "s3cret")})
    hub_store = ImageStore(tmp_path / "hub", max_bytes=1 << 30, registry=hub)
    try:
        by_digest = await store.get(f"{registry.host}/org/sh@{multi_image.manifest_digest}")
        assert by_digest.digest == multi_image.digest
        from_hub = await hub_store.get("busybox:1.36")
        assert from_hub.digest == multi_image.digest and from_hub.source == "docker.io/library/busybox:1.36"
        assert "manifest library/busybox 1.36" in registry.requests
    finally:
        await store.close()
        await hub_store.close()


async def test_docker_manifest_list_media_type(tmp_path: Path, registry: FakeRegistry,
                                               multi_image: BuiltImage) -> None:
    index = json.loads(multi_image.blobs[multi_image.index_digest])  # type: ignore[index]
    docker_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": index["manifests"]}).encode()
    repo = registry.repos["org/sh"]
    repo.blobs[sha256(docker_list)] = docker_list
    repo.media_types[sha256(docker_list)] = DOCKER_LIST
    repo.tags["docker"] = sha256(docker_list)
    store = await make_store(tmp_path / "store", registry)
    try:
        assert (await store.get(f"{registry.host}/org/sh:docker")).digest == multi_image.digest
    finally:
        await store.close()


async def test_tampered_blob_from_registry_is_refused(tmp_path: Path, registry: FakeRegistry,
                                                      multi_image: BuiltImage) -> None:
    layer = multi_image.layer_digests[1]
    registry.tampered[layer] = multi_image.blobs[layer][:-1] + bytes([multi_image.blobs[layer][-1] ^ 1])
    store = await make_store(tmp_path / "store", registry)
    try:
        with pytest.raises(DigestMismatch, match=layer):
            await store.get(f"{registry.host}/org/sh:latest")
        assert store.images() == [] and list((store.root / "tmp").iterdir()) == []
        registry.tampered = {multi_image.manifest_digest: multi_image.manifest_bytes + b" "}
        with pytest.raises(DigestMismatch, match="manifest"):
            await store.get(f"{registry.host}/org/sh:latest")
    finally:
        await store.close()


async def test_auth_failures_say_so(tmp_path: Path, registry: FakeRegistry) -> None:
    for creds in (None, ("robot", "wrong")):
        store = await make_store(tmp_path / f"store{creds is None}", registry, creds=creds)
        try:
            with pytest.raises(ImageError, match="token endpoint .* answered 401; check the credentials"):
                await store.get(f"{registry.host}/org/sh:latest")
        finally:
            await store.close()


async def test_unknown_names_and_platforms(tmp_path: Path, registry: FakeRegistry) -> None:
    store = await make_store(tmp_path / "store", registry)
    riscv = await make_store(tmp_path / "riscv", registry, platform=("linux", "riscv64"))
    try:
        with pytest.raises(ImageNotFound, match="404"):
            await store.get(f"{registry.host}/org/sh:nope")
        with pytest.raises(ImageNotFound, match="404"):
            await store.get(f"{registry.host}/org/other:latest")
        with pytest.raises(PlatformNotFound, match="linux/amd64, linux/arm64"):
            await riscv.get(f"{registry.host}/org/sh:latest")
    finally:
        await store.close()
        await riscv.close()


@pytest.mark.parametrize("text, want", [
    ("python:3.11", Reference("docker.io", "library/python", "3.11")),
    ("docker.io/library/python:3.11", Reference("docker.io", "library/python", "3.11")),
    ("ubuntu", Reference("docker.io", "library/ubuntu", "latest")),
    ("swebench/sweb.eval.x86_64.django:v1", Reference("docker.io", "swebench/sweb.eval.x86_64.django", "v1")),
    ("ghcr.io/org/img:tag", Reference("ghcr.io", "org/img", "tag")),
    ("localhost/img", Reference("localhost", "img", "latest")),
    ("host:5000/a/b@sha256:" + "a" * 64, Reference("host:5000", "a/b", None, "sha256:" + "a" * 64)),
    ("host:5000/a/b:t@sha256:" + "a" * 64, Reference("host:5000", "a/b", "t", "sha256:" + "a" * 64)),
])
def test_parse_reference(text: str, want: Reference) -> None:
    assert parse_reference(text) == want


@pytest.mark.parametrize("bad", ["UPPER/case", "a/b:bad tag", "a@sha256:short", "a@md5:" + "a" * 32])
def test_parse_reference_refuses(bad: str) -> None:
    with pytest.raises(ImageError):
        parse_reference(bad)
