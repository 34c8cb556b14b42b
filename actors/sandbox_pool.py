"""SandboxPool: a Ray actor owning one SlotPool, and a Sandbox that talks to it.

The actor is async with a high max_concurrency: hundreds of trajectories call it at once and
every method awaits I/O, so one actor per node serves them all on one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayActorError

from rollout.sandbox.config import PoolConfig
from rollout.sandbox.local import LocalBackend
from rollout.sandbox.pool import SlotPool
from rollout.types import ExecResult, SandboxError, Slot

log = logging.getLogger(__name__)

CALL_SLACK = 60.0  # seconds an actor call may take beyond the work it asks for


def make_backend(name: str, cfg: PoolConfig) -> Any:
    if name == "local":
        return LocalBackend(cfg)
    raise ValueError(f"unknown sandbox backend {name!r} (available: local)")


@ray.remote(max_concurrency=4096, num_cpus=0)
class SandboxPool:
    def __init__(self, backend: str, cfg: PoolConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self._pool = SlotPool(make_backend(backend, cfg), cfg)
        self._node_id = ray.get_runtime_context().get_node_id()
        self._gone: set[str] = set()  # trajectory-id prefixes of holders that died

    async def start(self) -> str:
        await self._pool.start()
        return self._node_id

    def node_id(self) -> str:
        return self._node_id

    async def acquire(self, trajectory_id: str, image: str | None, timeout: float) -> Slot:
        self._refuse_gone(trajectory_id)
        slot = await self._pool.acquire(trajectory_id, image=image, timeout=timeout)
        if self._is_gone(trajectory_id):  # its holder died while it waited for a slot
            await self._pool.release(slot)
            self._refuse_gone(trajectory_id)
        return slot

    def _is_gone(self, trajectory_id: str) -> bool:
        return any(trajectory_id.startswith(p) for p in self._gone)

    def _refuse_gone(self, trajectory_id: str) -> None:
        if self._is_gone(trajectory_id):
            raise SandboxError(f"{trajectory_id}: its holder is gone")

    async def release(self, slot: Slot, reset: bool = True) -> None:
        await self._pool.release(slot, reset=reset)

    async def exec(self, slot: Slot, command: str, timeout: float, cwd: str | None,
                   env: dict[str, str] | None) -> ExecResult:
        return await self._pool.exec(slot, command, timeout=timeout, cwd=cwd, env=env)

    async def read_file(self, slot: Slot, path: str, max_bytes: int | None) -> bytes:
        return await self._pool.read_file(slot, path, max_bytes=max_bytes)

    async def write_file(self, slot: Slot, path: str, data: bytes) -> None:
        await self._pool.write_file(slot, path, data)

    async def upload_archive(self, slot: Slot, data: bytes, path: str) -> None:
        await self._pool.upload_archive(slot, data, path=path)

    async def release_holder(self, prefix: str) -> int:
        """Free a dead holder's slots, and any it was still waiting for when it died."""
        self._gone.add(prefix)
        return await self._pool.release_holder(prefix)

    def stats(self) -> dict[str, Any]:
        return dict(self._pool.stats(), node_id=self._node_id)

    async def stop(self) -> None:
        await self._pool.stop()


class ActorSandbox:
    """`rollout.protocols.Sandbox` over a SandboxPool actor handle and one held slot.

    A SandboxError raised in the actor arrives as one here (Ray re-raises the cause's type);
    a dead actor becomes a SandboxError too, so the agent records sandbox_error.
    """

    def __init__(self, pool: Any, slot: Slot) -> None:
        self._pool = pool
        self.slot = slot

    async def _call(self, method: str, *args: Any, budget: float = 120.0) -> Any:
        # Bounded: a pool whose node vanished may never answer (Ray does not always fail
        # calls on a handle to an actor that died before this process learnt of it).
        try:
            return await asyncio.wait_for(
                getattr(self._pool, method).remote(self.slot, *args), budget)
        except SandboxError:
            raise
        except RayActorError as e:
            raise SandboxError(f"sandbox pool actor died: {e}") from e
        except asyncio.TimeoutError as e:
            raise SandboxError(f"sandbox pool did not answer {method} within {budget:.0f}s") from e

    async def exec(self, command: str, *, timeout: float = 60.0, cwd: str | None = None,
                   env: dict[str, str] | None = None) -> ExecResult:
        return await self._call("exec", command, timeout, cwd, env, budget=timeout + CALL_SLACK)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await self._call("read_file", path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        await self._call("write_file", path, data)

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        await self._call("upload_archive", data, path)
