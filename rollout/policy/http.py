"""One pooled HTTP connection set per policy client, with retries on transient errors only.

Guarantees:
- one `aiohttp.ClientSession` (created lazily in the running loop) and at most
  `max_connections` concurrent connections per client;
- retries (rollout/retry.py: tenacity, exponential backoff with jitter, `max_retries` of
  them) on connection errors and 5xx, never on 4xx, on a malformed body (the caller's or the
  server's bug, retrying cannot help) or on `request_timeout`; a cancelled caller stops at
  once, in a request or in a wait;
- the API key is read from the environment at construction and is never logged, repr'd or
  put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import aiohttp

from rollout.retry import retrying
from rollout.types import PolicyError

log = logging.getLogger(__name__)


class PooledHTTP:
    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        max_connections: int = 64,
        max_retries: int = 3,
        backoff: float = 0.5,
        request_timeout: float = 300.0,
    ) -> None:
        if not base_url:
            raise ValueError("policy.base_url is empty; set it to the server's URL, e.g. http://host:8000")
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        self.max_retries = max_retries
        self.backoff = backoff
        self.request_timeout = request_timeout
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"policy.api_key_env names {api_key_env!r}, which is not set.")
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PooledHTTP({self.base_url!r}, max_connections={self.max_connections})"

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            )
        return self._session

    async def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON and return the decoded object. The caller bounds the total time."""
        url = self.base_url + path

        def log_retry(n: int, error: BaseException, wait: float) -> None:
            log.warning("policy request to %s failed (%s); retry %d in %.2fs", url, error, n,
                        wait, extra={"retry_attempt": n, "retry_wait": wait})

        try:
            return await retrying(_TRANSIENT, retries=self.max_retries, backoff=self.backoff,
                                  backoff_max=BACKOFF_MAX, on_retry=log_retry)(
                self._post_once, url, payload)
        except _TRANSIENT as exc:
            raise PolicyError(
                f"policy server {self.base_url} failed after {self.max_retries + 1} attempts: {exc}"
            ) from exc
        except TimeoutError as exc:  # the request's total limit (a caller's timeout cancels)
            raise PolicyError(
                f"policy server {self.base_url} did not answer within "
                f"request_timeout={self.request_timeout:g}s"
            ) from exc

    async def _post_once(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        async with self._session_now().post(url, json=payload) as resp:
            body = await resp.read()
            if resp.status >= 500:
                raise _Transient(f"HTTP {resp.status} from {url}: {_snippet(body)}")
            if resp.status >= 400:
                raise PolicyError(f"HTTP {resp.status} from {url}: {_snippet(body)}")
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise PolicyError(f"{url} returned non-JSON: {_snippet(body)}") from exc
            if not isinstance(data, dict):
                raise PolicyError(f"{url} returned {type(data).__name__}, expected an object")
            return data

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class _Transient(Exception):
    pass


# Worth retrying: the server is down, restarting or overloaded. An exception that is both one
# of these and a TimeoutError (aiohttp's ServerTimeoutError) is retried like them.
_TRANSIENT = (_Transient, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
BACKOFF_MAX = 10.0  # seconds: the longest wait before one retry (plus jitter)


def _snippet(body: bytes, limit: int = 300) -> str:
    return body[:limit].decode("utf-8", errors="replace")
