"""`HostState`: one live host of a `HostFleet`. The fleet alone changes it; the pool reads
its client and whether it is draining (its slots' state lives in the pool's `SlotTable`)."""

from __future__ import annotations

import asyncio
import time

from rollout.sandbox.client import SlotServerClient
from rollout.types import Host

PROBE_TIMEOUT = 5.0


class HostState:
    """A host, its slot server's client, and what the fleet knows of its health (`alive`,
    `last_ok`).

    A host with a lifetime (`host.meta["retire_at"]`, wall-clock seconds) is draining from
    then on: none of its slots is handed out again, and the fleet retires it once the pool
    says it is idle (a slot of a draining host that came back no longer counts as busy)."""

    def __init__(self, host: Host, client: SlotServerClient, image: str | None) -> None:
        self.host = host
        self.client = client
        self.image = image
        self.alive = True
        self.last_ok = time.monotonic()
        self._probe: asyncio.Future[bool] | None = None
        self.retire_at: float | None = host.meta.get("retire_at")

    def draining(self) -> bool:
        return self.retire_at is not None and time.time() >= self.retire_at

    @property
    def host_id(self) -> str:
        return self.host.host_id

    def fresh(self, max_age: float) -> bool:
        """Heard from within `max_age` seconds (a probe or the monitor said it is fine)."""
        return time.monotonic() - self.last_ok <= max_age

    async def probe(self) -> bool:
        """The slot server's own health check; concurrent callers share one request.
        Data plane only (no control-plane call). Never raises."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> bool:
        try:
            await self.client.health(timeout=PROBE_TIMEOUT)
        except Exception:  # noqa: BLE001 - any failure means "not alive"
            return False
        self.last_ok = time.monotonic()
        return True
