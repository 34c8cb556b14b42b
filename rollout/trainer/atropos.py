"""An async client for the Atropos rollout API (atroposlib's `run-api`).

Protocol facts (see shared/notes/atropos-protocol.md): `/register-env` answers "wait for
trainer to start" until the trainer's first `/batch`; `/status-env` is a GET with a JSON body;
`/scored_data_list` takes a JSON list and accepts gzip. The server keeps everything in memory,
so after it restarts our env id is unknown (500) and we register again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from rollout.retry import retrying

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Worth retrying: connection refused/reset, timeout, 5xx."""


class RejectedError(Exception):
    """The server refused the data (4xx): retrying the same payload cannot help."""


@dataclass
class Registration:
    env_id: int
    wandb_name: str
    batch_size: int
    max_token_len: int
    starting_step: int = 0


class AtroposClient:
    def __init__(
        self,
        url: str,
        *,
        request_timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.reachable: bool | None = None  # did the API answer the last registration poll
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_retries = max_retries
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        session = await self._http()
        try:
            async with session.request(method, self.url + path, **kw) as resp:
                body = await resp.text()
                if resp.status >= 500:
                    raise TransientError(f"{method} {path}: HTTP {resp.status}: {body[:200]}")
                if resp.status >= 400:
                    raise RejectedError(f"{method} {path}: HTTP {resp.status}: {body[:300]}")
                try:
                    return json.loads(body) if body else None
                except json.JSONDecodeError as e:
                    raise TransientError(f"{method} {path}: not JSON: {body[:200]}") from e
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            raise TransientError(f"{method} {path}: {type(e).__name__}: {e}") from e

    async def _retrying(self, method: str, path: str, **kw: Any) -> Any:
        """`_request`, with up to `max_retries` retries of transient failures (rollout/retry.py)."""

        def log_retry(n: int, error: BaseException, wait: float) -> None:
            log.debug("atropos %s %s failed (%s); retry %d in %.1fs", method, path, error, n,
                      wait, extra={"retry_attempt": n, "retry_wait": wait})

        return await retrying(TransientError, retries=self._max_retries, backoff=self._backoff,
                              backoff_max=self._backoff_max, on_retry=log_retry)(
            self._request, method, path, **kw)

    async def info(self) -> dict[str, Any]:
        return await self._request("GET", "/info")

    async def register_env(
        self,
        *,
        name: str,
        group_size: int,
        max_token_length: int,
        weight: float = 1.0,
        min_batch_allocation: float | None = None,
        poll_interval: float = 1.0,
        stop: asyncio.Event | None = None,
    ) -> Registration:
        """Wait for the trainer (and the API itself) to be up, then register this env."""
        payload: dict[str, Any] = {
            "max_token_length": max_token_length,
            "desired_name": name,
            "weight": weight,
            "group_size": group_size,
        }
        if min_batch_allocation is not None:
            payload["min_batch_allocation"] = min_batch_allocation
        waited = 0.0
        while True:
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError("stopping before the trainer started")
            try:
                reply = await self._request("POST", "/register-env", json=payload)
                if not self.reachable:
                    log.info("the Atropos API at %s answers", self.url)
                self.reachable = True
                if reply.get("status") == "success":
                    info = await self.info()
                    reg = Registration(
                        env_id=int(reply["env_id"]),
                        wandb_name=str(reply.get("wandb_name", name)),
                        batch_size=int(info.get("batch_size", -1)),
                        max_token_len=int(info.get("max_token_len", -1)),
                        starting_step=int(reply.get("starting_step") or 0),
                    )
                    log.info(
                        "registered with Atropos at %s as env %d (%s); trainer batch_size=%d "
                        "max_token_len=%d",
                        self.url, reg.env_id, reg.wandb_name, reg.batch_size, reg.max_token_len,
                    )
                    return reg
                what = f"the API is up; the trainer has not registered yet ({reply.get('status', reply)})"
            except TransientError as e:
                if self.reachable is not False:
                    log.warning("the Atropos API at %s is not reachable (%s); retrying", self.url, e)
                self.reachable = False
                what = f"the API is NOT reachable: {e}"
            if waited == 0.0 or int(waited) % 30 == 0:
                log.info("waiting for the Atropos trainer at %s: %s", self.url, what)
            await asyncio.sleep(poll_interval)
            waited += poll_interval

    async def status(self, env_id: int) -> dict[str, Any]:
        """GET /status-env with a JSON body (a query parameter gives 422)."""
        return await self._request("GET", "/status-env", json={"env_id": env_id})

    async def send(self, groups: list[dict[str, Any]], env_id: int) -> dict[str, Any]:
        """POST /scored_data_list, gzipped, retrying transient failures."""
        body = [dict(g, env_id=env_id) for g in groups]
        data = gzip.compress(json.dumps(body, separators=(",", ":")).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return await self._retrying("POST", "/scored_data_list", data=data, headers=headers)
