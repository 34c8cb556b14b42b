"""A local registry following the OCI distribution spec closely enough to pull from:
`/v2/<name>/manifests/<tag|digest>` (honouring Accept), `/v2/<name>/blobs/<digest>` (a 307 to a
storage URL, as real registries do), bearer-token auth (401 + `WWW-Authenticate: Bearer
realm=...,service=...,scope=...`; the token endpoint may demand basic credentials), and a log
of every request so tests can assert what was fetched."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from .build import BuiltImage

SERVICE = "fake-registry"


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest or index digest
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes (manifests included)
    media_types: dict[str, str] = field(default_factory=dict)  # manifest digest -> media type


def repo_from(built: BuiltImage, tag: str = "latest") -> Repo:
    repo = Repo(blobs=dict(built.blobs))
    for digest, data in built.blobs.items():
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(doc, dict) and ("manifests" in doc or "layers" in doc):
            repo.media_types[digest] = doc["mediaType"]
    repo.tags[tag] = built.index_digest or built.manifest_digest
    return repo


class FakeRegistry:
    def __init__(self, repos: dict[str, Repo], credentials: tuple[str, str] | None = None) -> None:
        self.repos = repos
        self.credentials = credentials
        self.requests: list[str] = []
        self.tampered: dict[str, bytes] = {}  # digest -> bytes served instead
        self._tokens: dict[str, str] = {}  # token -> repository it grants pull on
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    async def start(self) -> "FakeRegistry":
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/", self._base)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/storage/{name:.+}/{digest}", self._storage)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _challenge(self, name: str) -> web.Response:
        header = f'Bearer realm="{self.url}/token",service="{SERVICE}",scope="repository:{name}:pull"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                 headers={"WWW-Authenticate": header})

    def _authorized(self, request: web.Request, name: str) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and self._tokens.get(auth[7:]) == name

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(f"token {request.query.get('scope', '')}")
        scope = request.query.get("scope", "")
        if request.query.get("service") != SERVICE or not scope.startswith("repository:") or not scope.endswith(":pull"):
            return web.json_response({"errors": [{"code": "DENIED"}]}, status=400)
        if self.credentials is not None:
            want = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if request.headers.get("Authorization") != want:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        token = secrets.token_hex(16)
        self._tokens[token] = scope[len("repository:"):-len(":pull")]
        return web.json_response({"token": token, "expires_in": 300})

    async def _base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        name, ref = request.match_info["name"], request.match_info["ref"]
        self.requests.append(f"manifest {name} {ref}")
        if not self._authorized(request, name):
            return self._challenge(name)
        repo = self.repos.get(name)
        digest = (repo.tags.get(ref) or (ref if ref in repo.blobs else None)) if repo else None
        if repo is None or digest is None or digest not in repo.media_types:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        media_type = repo.media_types[digest]
        accepted = [a.split(";")[0].strip() for a in request.headers.get("Accept", "").split(",")]
        if media_type not in accepted:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "detail": "not acceptable"}]},
                                     status=404)
        body = self.tampered.get(digest, repo.blobs[digest])
        return web.Response(body=body, content_type=media_type, headers={"Docker-Content-Digest": digest})

    async def _blob(self, request: web.Request) -> web.Response:
        name, digest = request.match_info["name"], request.match_info["digest"]
        self.requests.append(f"blob {name} {digest}")
        if not self._authorized(request, name):
            return self._challenge(name)
        repo = self.repos.get(name)
        if repo is None or digest not in repo.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        raise web.HTTPTemporaryRedirect(f"/storage/{name}/{digest}")

    async def _storage(self, request: web.Request) -> web.Response:
        name, digest = request.match_info["name"], request.match_info["digest"]
        data = self.tampered.get(digest, self.repos[name].blobs[digest])
        return web.Response(body=data, content_type="application/octet-stream")
