"""`HostState`: what the pool knows about one live host (leases, busy count, liveness)."""

from __future__ import annotations

import asyncio
import time

from rollout.protocols import Backend
from rollout.sandbox.client import SlotServerClient
from rollout.types import Host

PROBE_TIMEOUT = 5.0


class HostState:
    """Per-host bookkeeping. `busy` counts slots not on the free list (reserved, leased or
    being reset); `leases[i]` is the lease id of slot i's holder, or None."""

    def __init__(self, host: Host, client: SlotServerClient, image: str | None) -> None:
        self.host = host
        self.client = client
        self.image = image
        self.leases: list[str | None] = [None] * host.slots
        self.holders: list[str | None] = [None] * host.slots
        self.busy = 0
        self.idle_since = time.monotonic()
        self.alive = True
        self.last_ok = time.monotonic()
        self._probe: asyncio.Future[bool] | None = None

    async def check_alive(self, backend: Backend, max_age: float) -> bool:
        """Cheap check before hand-out: the provisioner's view always, plus an HTTP health
        probe when the last successful contact is older than `max_age` seconds."""
        if not await backend.host_alive(self.host):
            return False
        if time.monotonic() - self.last_ok <= max_age:
            return True
        return await self.probe(backend)

    async def probe(self, backend: Backend) -> bool:
        """Full liveness probe; concurrent callers share one request. Never raises."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe(backend))
        return await asyncio.shield(self._probe)

    async def _run_probe(self, backend: Backend) -> bool:
        try:
            ok = await backend.host_alive(self.host)
            if ok:
                await self.client.health(timeout=PROBE_TIMEOUT)
        except Exception:  # noqa: BLE001 - any failure means "not alive"
            ok = False
        if ok:
            self.last_ok = time.monotonic()
        return ok
