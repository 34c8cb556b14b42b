"""Connection guard of the slot server: against slow or idle clients.

aiohttp reads a request's headers without a deadline and accepts any number of
connections. `guarded(factory)` wraps its protocol factory so that:
- at most `max_connections` connections are open: one over it is closed at once;
- a connection must deliver its first request's complete headers within `header_timeout`
  seconds of connecting, else it is closed. Between requests of a kept-alive connection
  aiohttp's own `keepalive_timeout` applies; bodies have a deadline between chunks
  (`api.read_body`).
A request being handled is never cut by the guard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"


class ConnectionGuard:
    def __init__(self, factory: Callable[[], Any], *, max_connections: int,
                 header_timeout: float) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    def describe(self) -> dict[str, int]:
        return {"open": self.open, "refused": self.refused, "header_timeouts": self.timed_out}


class _Guarded(asyncio.Protocol):
    """Stands between the transport and aiohttp's handler (whose slots forbid wrapping its
    methods in place): counts the connection and keeps the header deadline."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused += 1
            transport.close()
            return
        guard.open += 1
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(
            guard.header_timeout, self._expire, transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        self._guard.timed_out += 1
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._guard.open -= 1
            self._counted = False
        self._inner.connection_lost(exc)
