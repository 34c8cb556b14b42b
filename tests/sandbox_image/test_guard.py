"""The slot server's connection guard (sandbox_image/guard.py) against slow clients: idle
connections that never send their headers are closed after --header-timeout, connections
over --max-connections are closed at once, and the server keeps answering."""

from __future__ import annotations

import select
import socket

import aiohttp

from rollout.sandbox.client import SlotServerClient

from .conftest import running_server, wait_until


def _closed_by_server(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BlockingIOError):
        return True


async def test_idle_and_surplus_connections_are_closed_and_the_server_still_answers() -> None:
    gen = running_server("slot-guard-", "--slots", "1", "--max-connections", "8",
                         "--header-timeout", "1")
    srv = next(gen)
    socks: list[socket.socket] = []
    try:
        for _ in range(12):  # 4 over the limit
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            socks.append(s)
        # The 4 over the limit are closed at once; the header deadline closes the rest.
        assert wait_until(lambda: sum(map(_closed_by_server, socks)) >= 4, timeout=5)
        assert wait_until(lambda: all(map(_closed_by_server, socks)), timeout=10)
        # ... and the server answers as before.
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            health = await c.health()
            assert health["connections"]["refused"] >= 4
            assert health["connections"]["header_timeouts"] >= 8
            assert (await c.exec(0, "echo ok")).stdout == "ok\n"
    finally:
        for s in socks:
            s.close()
        next(gen, None)

