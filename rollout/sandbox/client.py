"""Async HTTP client for one slot server. The caller owns the aiohttp session (one per pool).

Error mapping:
- connection refused/reset, or no answer in time -> `HostUnreachable` (a SandboxError; the
  pool then checks whether the host died);
- 4xx for a bad path or argument -> `SlotRequestError` (a ValueError: the caller's input was
  wrong, the sandbox is fine); 404 for a missing file -> FileNotFoundError;
- anything else (401/403, 5xx, malformed reply) -> SandboxError.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from rollout.types import ExecResult, PythonResult, SandboxError
from sandbox_image.api import KEY_HEADER, LEASE_HEADER, lease_key

# Extra seconds over a command's own timeout before the client gives up on the server.
EXEC_MARGIN = 30.0
FILE_TIMEOUT = 120.0
IMAGE_TIMEOUT = 900.0  # a reset into an image the host has never unpacked


# The per-slot operations of SlotServerClient (first argument: the slot index) that pools and
# sandbox views forward by name; `rollout.sandbox.slot_sandbox.SandboxOps` types them.
SLOT_OPS = ("exec", "python", "read_file", "write_file", "list_dir", "archive",
            "upload_archive", "refresh")




class HostUnreachable(SandboxError):
    """The slot server did not answer (process gone, connection refused, timed out)."""


class SlotRequestError(ValueError):
    """The server refused a request as invalid (path outside the workspace, bad cwd, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def exec_result(d: dict[str, Any]) -> ExecResult:
    return ExecResult(
        exit_code=int(d["exit_code"]),
        stdout=d.get("stdout", ""),
        stderr=d.get("stderr", ""),
        timed_out=bool(d.get("timed_out", False)),
        truncated=bool(d.get("truncated", False)),
        duration=float(d.get("duration", 0.0)),
    )


class ImageUnavailable(SandboxError):
    """The server cannot run the slot in the image asked for (missing, unpullable, not
    runnable there); the slot is as it was before the request."""


def _raise_for(status: int, message: str, where: str) -> None:
    if status == 404 and "no such file" in message:
        raise FileNotFoundError(message)
    if status in (409, 422):
        raise ImageUnavailable(f"slot server {where}: {message}")
    if status in (400, 404, 413):
        raise SlotRequestError(message, status)
    raise SandboxError(f"slot server {where}: {message} (HTTP {status})")


class SlotServerClient:
    """One slot server. Stateless apart from the address and token; safe for concurrent use."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self._token = token.encode()
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def for_lease(cls, session: aiohttp.ClientSession, url: str, key: str) -> SlotServerClient:
        """A client for one leased slot, by its lease's key instead of the host's token
        (what a worker holds): its commands and files only (pass the lease on each call)."""
        client = cls(session, url, "")
        client._headers = {KEY_HEADER: key}
        return client

    def lease_key(self, slot: int, lease: str) -> str:
        """The key of `lease` on `slot` (needs the host's token: the pool mints it)."""
        return lease_key(self._token, slot, lease)

    async def _request(self, method: str, path: str, *, timeout: float,
                       raw: bool = False, lease: str | None = None, **kwargs: Any) -> Any:
        headers = self._headers if lease is None else {**self._headers, LEASE_HEADER: lease}
        try:
            async with self.session.request(
                method, self.url + path, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout), **kwargs,
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    try:
                        message = (await resp.json(content_type=None))["error"]
                    except (ValueError, KeyError, TypeError):
                        message = body[:200].decode("utf-8", "replace")
                    _raise_for(resp.status, message, self.url)
                if raw:
                    return body, resp.headers
                return await resp.json(content_type=None)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                asyncio.TimeoutError) as e:
            raise HostUnreachable(
                f"slot server {self.url} unreachable ({type(e).__name__}: {e})") from e
        except ValueError as e:
            if isinstance(e, SlotRequestError | FileNotFoundError):
                raise
            raise SandboxError(f"slot server {self.url}: malformed reply ({e})") from e

    async def livez(self, timeout: float = 5.0) -> bool:
        try:
            async with self.session.get(self.url + "/livez",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def health(self, timeout: float = 5.0) -> dict[str, Any]:
        return await self._request("GET", "/health", timeout=timeout)

    async def exec(self, slot: int, command: str, *, timeout: float = 60.0,
                   cwd: str | None = None, env: dict[str, str] | None = None,
                   grading: bool = False, lease: str | None = None) -> ExecResult:
        """`grading`: run with the image's own toolchain over the slot's files, in a fresh
        process tree (a state-graded task's verifier; sandbox_image/grading_view.py)."""
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = env
        if grading:
            body["grading"] = True
        d = await self._request("POST", f"/slots/{slot}/exec", json=body,
                                timeout=timeout + EXEC_MARGIN, lease=lease)
        return exec_result(d)

    async def python(self, slot: int, code: str, *, timeout: float = 60.0,
                     lease: str | None = None) -> PythonResult:
        """Run code in the slot's stateful Python session (started on first use)."""
        d = await self._request("POST", f"/slots/{slot}/python",
                                json={"code": code, "timeout": timeout},
                                timeout=timeout + EXEC_MARGIN, lease=lease)
        return PythonResult(
            stdout=str(d.get("stdout", "")), stderr=str(d.get("stderr", "")),
            result=d.get("result"), error=d.get("error"),
            timed_out=bool(d.get("timed_out", False)),
            session_lost=bool(d.get("session_lost", False)), message=str(d.get("message", "")),
            duration=float(d.get("duration", 0.0)))

    async def read_file(self, slot: int, path: str, max_bytes: int | None = None, *,
                        lease: str | None = None) -> bytes:
        params = {"path": path}
        if max_bytes is not None:
            params["max_bytes"] = str(max_bytes)
        body, _ = await self._request("GET", f"/slots/{slot}/file", params=params,
                                      timeout=FILE_TIMEOUT, raw=True, lease=lease)
        return body

    async def write_file(self, slot: int, path: str, data: bytes, *,
                         lease: str | None = None) -> None:
        await self._request("PUT", f"/slots/{slot}/file", params={"path": path}, data=data,
                            timeout=FILE_TIMEOUT, lease=lease)

    async def list_dir(self, slot: int, path: str = ".", *,
                       lease: str | None = None) -> list[dict[str, Any]]:
        d = await self._request("GET", f"/slots/{slot}/list", params={"path": path},
                                timeout=FILE_TIMEOUT, lease=lease)
        return d["entries"]

    async def archive(self, slot: int, path: str = ".", *, lease: str | None = None) -> bytes:
        body, _ = await self._request("GET", f"/slots/{slot}/archive", params={"path": path},
                                      timeout=FILE_TIMEOUT, raw=True, lease=lease)
        return body

    async def upload_archive(self, slot: int, data: bytes, path: str = ".", *,
                             lease: str | None = None) -> int:
        d = await self._request("POST", f"/slots/{slot}/upload", params={"path": path},
                                data=data, timeout=FILE_TIMEOUT, lease=lease)
        return int(d["members"])

    async def refresh(self, slot: int, *, lease: str | None = None) -> None:
        """Wipe the slot as a reset does (its processes killed, its writable layers and
        workspace back to the image's) but keep the lease: the holder gets a fresh slot."""
        await self._request("POST", f"/slots/{slot}/refresh", timeout=FILE_TIMEOUT,
                            lease=lease)

    async def reset(self, slot: int, image: str | None = None, *,
                    lease: str | None = None) -> None:
        """Wipe the slot and end its lease (`lease`: the one being ended; the server refuses
        it from then on); with `image`, move it to that image (the server fetches it)."""
        if image is None:
            await self._request("POST", f"/slots/{slot}/reset", timeout=FILE_TIMEOUT,
                                lease=lease)
        else:  # the first use of an image on a host pulls and unpacks it
            await self._request("POST", f"/slots/{slot}/reset", timeout=IMAGE_TIMEOUT,
                                json={"image": image}, lease=lease)

