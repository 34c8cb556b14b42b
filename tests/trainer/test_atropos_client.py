"""AtroposClient's retries against the real atroposlib API server (`run-api`).

Failures are injected by a small proxy in front of the real server: it answers the first
`fail` requests to a path with 503 and forwards everything else, so every request that gets
through is handled by the real API.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rollout.trainer.atropos import AtroposClient, RejectedError, TransientError
from tests.atropos_server import AtroposAPI, TestTrainer, free_port
from tests.trainer.test_outbox import group

SEND = "/scored_data_list"


class FlakyProxy:
    def __init__(self, upstream: str, fail: dict[str, int]) -> None:
        self.upstream = upstream
        self.fail = dict(fail)  # path -> how many requests still get a 503
        self.seen: dict[str, int] = {}
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.seen[path] = self.seen.get(path, 0) + 1
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            return web.Response(status=503, text="injected 503")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "content-encoding")}
        body = await request.read()  # aiohttp has already un-gzipped it: gzip it again
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.compress(body)
        async with self._session.request(request.method, self.upstream + path,
                                         data=body, headers=headers) as up:
            return web.Response(status=up.status, body=await up.read(),
                                content_type=up.content_type)


@pytest.fixture
def api(tmp_path: Path):
    server = AtroposAPI(log_dir=tmp_path)
    server.start()
    trainer = TestTrainer(server.url, batch_size=2)
    trainer.start()
    yield server, trainer
    server.stop()


async def registered(url: str, **kw) -> tuple[AtroposClient, int]:
    client = AtroposClient(url, request_timeout=10, **kw)
    reg = await client.register_env(name="retry-test", group_size=2, max_token_length=64,
                                    poll_interval=0.1)
    return client, reg.env_id


def retries(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "retry_attempt")]


async def test_transient_failures_are_retried_and_the_group_arrives(api, caplog):
    server, trainer = api
    proxy = FlakyProxy(server.url, {SEND: 2})
    await proxy.start()
    caplog.set_level(logging.DEBUG, logger="rollout.trainer.atropos")
    client, env_id = await registered(proxy.url, max_retries=3, backoff=0.01)
    try:
        await client.send([group()], env_id)
    finally:
        await client.close()
        await proxy.stop()
    assert proxy.seen[SEND] == 3  # two 503s, then the real API took it
    assert [r.retry_attempt for r in retries(caplog)] == [1, 2]
    assert trainer.pull() is not None and len(trainer.groups()) == 1


async def test_retries_stop_at_max_retries_and_the_waits_follow_the_backoff(api, caplog):
    server, _ = api
    proxy = FlakyProxy(server.url, {SEND: 100})
    await proxy.start()
    caplog.set_level(logging.DEBUG, logger="rollout.trainer.atropos")
    client, env_id = await registered(proxy.url, max_retries=3, backoff=0.02, backoff_max=0.03)
    try:
        with pytest.raises(TransientError, match="HTTP 503"):
            await client.send([group()], env_id)
    finally:
        await client.close()
        await proxy.stop()
    assert proxy.seen[SEND] == 4
    waits = [r.retry_wait for r in retries(caplog)]
    # backoff 0.02 doubling, capped at backoff_max 0.03, plus a jitter of at most 0.02.
    for wait, low in zip(waits, [0.02, 0.03, 0.03], strict=True):
        assert low <= wait <= low + 0.02, waits


async def test_a_rejected_group_is_not_retried(api, caplog):
    server, _ = api
    proxy = FlakyProxy(server.url, {})
    await proxy.start()
    caplog.set_level(logging.DEBUG, logger="rollout.trainer.atropos")
    client, env_id = await registered(proxy.url, max_retries=3, backoff=0.01)
    try:
        with pytest.raises(RejectedError, match="HTTP 422"):
            await client.send([{"tokens": [[1]]}], env_id)  # no masks, no scores
    finally:
        await client.close()
        await proxy.stop()
    assert proxy.seen[SEND] == 1 and retries(caplog) == []


async def test_a_cancelled_send_stops_retrying(caplog):
    client = AtroposClient(f"http://127.0.0.1:{free_port()}", max_retries=5, backoff=60.0)
    caplog.set_level(logging.DEBUG, logger="rollout.trainer.atropos")
    send = asyncio.create_task(client.send([group()], env_id=0))
    try:
        while not retries(caplog):  # nothing listens: the first try failed, the wait begins
            assert not send.done(), send
            await asyncio.sleep(0.01)
        send.cancel()
        done, _ = await asyncio.wait({send}, timeout=30)  # a hang guard, not a timing
        assert send in done and send.cancelled()
    finally:
        await client.close()
    assert len(retries(caplog)) == 1
