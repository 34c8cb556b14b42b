"""`SlotSandbox`: the `rollout.protocols.Sandbox` view of one acquired slot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollout.types import ExecResult, Slot

if TYPE_CHECKING:
    from rollout.sandbox.pool import SlotPool


class SlotSandbox:
    """Binds a pool and one slot; every call goes through the pool (so a stale slot or a
    dead host raises SandboxError exactly as with the pool's own methods)."""

    def __init__(self, pool: SlotPool, slot: Slot) -> None:
        self.pool = pool
        self.slot = slot

    async def exec(self, command: str, *, timeout: float = 60.0, cwd: str | None = None,
                   env: dict[str, str] | None = None) -> ExecResult:
        return await self.pool.exec(self.slot, command, timeout=timeout, cwd=cwd, env=env)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await self.pool.read_file(self.slot, path, max_bytes=max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        await self.pool.write_file(self.slot, path, data)

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        await self.pool.upload_archive(self.slot, data, path=path)

    async def list_dir(self, path: str = ".") -> list[dict[str, Any]]:
        return await self.pool.list_dir(self.slot, path)

    async def archive(self, path: str = ".") -> bytes:
        return await self.pool.archive(self.slot, path)

    def __repr__(self) -> str:
        return f"SlotSandbox({self.slot.host_id}/{self.slot.index})"
