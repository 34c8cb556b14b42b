"""Backends for tests of the seam (registered like any backend; never shipped).

- `slow`: real local slot servers behind a slow, flaky control plane: each start waits before
  and after the server comes up, a seeded share of starts fails (before the server exists, or
  after it is running), and it counts control-plane calls. Every event goes to a JSONL file so
  tests in the driver can read what a backend in a Ray actor did.
- `slow_sharded`: the same, placed as a remote backend (shards, global quota).
- `virtual`: hosts without processes (for start-rate bursts of hundreds of hosts); its slots
  can be acquired and released without reset, nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from rollout.sandbox.config import BackendConfig, Placement
from sandbox_image.config import SlotLimits
from rollout.sandbox.local import LocalBackend
from rollout.sandbox.registry import register
from rollout.types import Host, SandboxError


@register
class SlowConfig(BackendConfig):
    name: Literal["slow"] = "slow"
    delay_before: float = 0.2  # seconds of "control plane" before the server starts
    delay_after: float = 0.2  # ... and after it is running, before start_host returns
    fail_rate: float = 0.2
    seed: int = 0
    events: str = ""  # JSONL event log path ("" = none)

    def create(self, limits: SlotLimits, run_id: str) -> SlowBackend:
        return SlowBackend(self, limits, run_id)


@register
class SlowShardedConfig(SlowConfig):
    placement: ClassVar[Placement] = "sharded"
    name: Literal["slow_sharded"] = "slow_sharded"  # type: ignore[assignment]


class SlowBackend:
    name = "slow"

    def __init__(self, cfg: SlowConfig, limits: SlotLimits, run_id: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.local = LocalBackend(limits)
        self.rng = random.Random(f"{cfg.seed}:{run_id}")
        self.alive_calls: list[list[str]] = []
        self.starts: list[tuple[float, float]] = []  # (began, ended) of every start

    def record(self, event: str, **data: Any) -> None:
        if self.cfg.events:
            line = json.dumps({"event": event, "t": time.monotonic(), "run": self.run_id,
                               "pid": os.getpid(), **data})
            with open(self.cfg.events, "a") as f:
                f.write(line + "\n")

    async def start_host(self, image: str | None, slots: int) -> Host:
        began = time.monotonic()
        fail = self.rng.random() < self.cfg.fail_rate
        fail_late = self.rng.random() < 0.5
        self.record("start", image=image)
        try:
            await asyncio.sleep(self.cfg.delay_before)
            if fail and not fail_late:
                raise SandboxError("injected start failure (control plane refused)")
            # The image is a label here (fleet tests): the slots run in the host view.
            host = dataclasses.replace(await self.local.start_host(None, slots), image=image)
            self.record("server", image=image, host=host.host_id, server_pid=host.meta["pid"])
            if fail:
                await self.local.stop_host(host)  # cleans up after itself
                raise SandboxError("injected start failure (server up, registration failed)")
            # Cancelled here, the running server is left to close() (the other half of the
            # contract): LocalBackend still tracks it.
            await asyncio.sleep(self.cfg.delay_after)
        except asyncio.CancelledError:
            self.record("cancelled", image=image)
            raise
        except SandboxError as e:
            self.record("failed", image=image, error=str(e))
            raise
        finally:
            self.starts.append((began, time.monotonic()))
        self.record("started", image=image, host=host.host_id)
        return host

    async def stop_host(self, host: Host) -> None:
        self.record("stop", host=host.host_id)
        await self.local.stop_host(host)

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        self.alive_calls.append([h.host_id for h in hosts])
        self.record("alive", hosts=[h.host_id for h in hosts])
        return await self.local.hosts_alive(hosts)

    async def discover(self) -> list[Host]:
        return []

    async def close(self) -> None:
        self.record("close")
        await self.local.close()


@register
class VirtualConfig(BackendConfig):
    name: Literal["virtual"] = "virtual"
    start_delay: float = 0.05
    leftover_slots: tuple[int, ...] = ()  # hosts (by slot count) "still running" at start

    def create(self, limits: SlotLimits, run_id: str) -> VirtualBackend:
        return VirtualBackend(self)


class VirtualBackend:
    """Hosts that are only records: for testing the fleet's start limits at scale."""

    name = "virtual"

    def __init__(self, cfg: VirtualConfig) -> None:
        self.cfg = cfg
        self.ids = itertools.count()
        self.running: dict[str, str | None] = {}
        self.starts: list[tuple[float, float]] = []  # loop time (began, ended)
        self.alive_calls = 0
        self.leftovers = [self._host(f"leftover-{i}", cfg.default_image, slots)
                          for i, slots in enumerate(cfg.leftover_slots)]
        self.running.update({h.host_id: h.image for h in self.leftovers})

    @staticmethod
    def _host(host_id: str, image: str | None, slots: int) -> Host:
        return Host(host_id=host_id, url="http://127.0.0.1:9", token="x" * 32, image=image,
                    slots=slots)

    async def start_host(self, image: str | None, slots: int) -> Host:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await asyncio.sleep(self.cfg.start_delay)
        finally:
            self.starts.append((began, loop.time()))
        host_id = f"virtual-{next(self.ids)}"
        self.running[host_id] = image
        return self._host(host_id, image, slots)

    async def stop_host(self, host: Host) -> None:
        self.running.pop(host.host_id, None)

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        self.alive_calls += 1
        return {h.host_id for h in hosts if h.host_id in self.running}

    async def discover(self) -> list[Host]:
        return [h for h in self.leftovers if h.host_id in self.running]

    async def close(self) -> None:
        self.running.clear()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
