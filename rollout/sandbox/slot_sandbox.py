"""`SandboxOps`: the typed per-slot operations, written once; `SlotSandbox` binds them to a
local SlotPool, `actors.sandbox_pool.ActorSandbox` to a pool actor. A new operation is a
client method (rollout/sandbox/client.py, listed in SLOT_OPS) plus one method here."""

from __future__ import annotations

from typing import Any, Protocol

from rollout.types import ExecResult, PythonResult, Slot


class SlotCaller(Protocol):
    """What a SlotSandbox forwards to (a SlotPool)."""

    async def call(self, slot: Slot, op: str, *args: Any, **kwargs: Any) -> Any: ...


class SandboxOps:
    """Implements `rollout.protocols.Sandbox` over `_forward(op, *args, **kwargs)`."""

    slot: Slot

    async def _forward(self, op: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def exec(self, command: str, *, timeout: float = 60.0, cwd: str | None = None,
                   env: dict[str, str] | None = None, grading: bool = False) -> ExecResult:
        if grading:  # passed only when set: every other call stays as it was
            return await self._forward("exec", command, timeout=timeout, cwd=cwd, env=env,
                                       grading=True)
        return await self._forward("exec", command, timeout=timeout, cwd=cwd, env=env)

    async def python(self, code: str, *, timeout: float = 60.0) -> PythonResult:
        return await self._forward("python", code, timeout=timeout)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await self._forward("read_file", path, max_bytes=max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        await self._forward("write_file", path, data)

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        await self._forward("upload_archive", data, path=path)

    async def list_dir(self, path: str = ".") -> list[dict[str, Any]]:
        return await self._forward("list_dir", path)

    async def archive(self, path: str = ".") -> bytes:
        return await self._forward("archive", path)

    async def refresh(self) -> None:
        """A fresh slot under the same lease (see `SlotServerClient.refresh`)."""
        await self._forward("refresh")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.slot.host_id}/{self.slot.index})"


class SlotSandbox(SandboxOps):
    """One slot of a local pool; every call goes through `SlotPool.call` (so a stale slot or
    a dead host raises SandboxError exactly as with the pool's own methods)."""

    def __init__(self, pool: SlotCaller, slot: Slot) -> None:
        self.pool = pool
        self.slot = slot

    async def _forward(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return await self.pool.call(self.slot, op, *args, **kwargs)
