"""`LocalBackend`: slot servers as subprocesses of this process, on loopback.

Each host gets its own directory under a private root in the system temp dir (data dir and
token file, mode 0600), a fresh token, and port 0 (the server announces the port it bound,
so there is no race for free ports). Backstops against leaks: the server is started with
--exit-with-parent (it exits when this process dies, however it dies), and an atexit hook
SIGKILLs any server this process started that is still alive.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from rollout.sandbox.config import BackendConfig
from sandbox_image.config import SlotLimits
from rollout.sandbox.registry import register
from rollout.types import Host, SandboxError

log = logging.getLogger(__name__)

READY_PREFIX = "SLOT_SERVER_READY "
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

# pid -> process group of every live slot server started by this process (atexit backstop).
_LIVE_SERVERS: dict[int, int] = {}


@atexit.register
def _kill_leftover_servers() -> None:
    for pid in list(_LIVE_SERVERS):
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == _LIVE_SERVERS[pid]:  # still our server, not a reused pid
                os.killpg(_LIVE_SERVERS[pid], signal.SIGKILL)
        _LIVE_SERVERS.pop(pid, None)


@register
class LocalConfig(BackendConfig):
    """`backend=local`: slot servers as subprocesses on every Ray node."""

    name: Literal["local"] = "local"
    # One server's start, including the first pull and unpack of its image.
    start_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    python: str = sys.executable  # runs the slot server; the `python` of host-view slots
    mix_images: bool = True  # a server's slots switch images (see BackendConfig)
    # Unpacked images, shared by every server of this machine (and kept across runs).
    image_store: str = Field(default_factory=lambda: default_image_store())

    def create(self, limits: SlotLimits, run_id: str) -> LocalBackend:
        return LocalBackend(limits, python=self.python, start_timeout=self.start_timeout,
                            image_store=self.image_store)


def server_pythonpath() -> str:
    """The PYTHONPATH a local slot server runs with: this checkout first (it is what runs)."""
    return os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))


def default_image_store() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rollout", "images")


class LocalBackend:
    """Implements `rollout.protocols.Backend`. The image is only a label here."""

    name = "local"

    def __init__(
        self,
        limits: SlotLimits | None = None,
        *,
        root_dir: str | None = None,
        python: str = sys.executable,
        start_timeout: float = 60.0,
        image_store: str | None = None,
    ) -> None:
        self.limits = limits or SlotLimits()
        self.python = python
        self.image_store = image_store or default_image_store()
        self.start_timeout = start_timeout
        self.root = Path(root_dir or tempfile.mkdtemp(prefix="rollout-slots-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        # Killed by a cancelled stop that could not wait: close() waits for their exit.
        self._dying: set[asyncio.subprocess.Process] = set()
        self._ids = itertools.count()

    def _argv(self, host_dir: Path, slots: int, image: str | None) -> list[str]:
        return [
            self.python, "-m", "sandbox_image",
            "--host", "127.0.0.1", "--port", "0",
            "--slots", str(slots),
            "--data-dir", str(host_dir / "data"),
            "--token-file", str(host_dir / "token"),
            *self.limits.to_argv(),
            *(["--image", image] if image else []),
            "--image-store", self.image_store,
            "--host-python", self.python,
            "--hide", str(self.root),
            "--exit-with-parent",
            # Pools lease every slot they hand out: a request without its lease is refused.
            "--leases", "required",
        ]

    async def start_host(self, image: str | None, slots: int) -> Host:
        host_id = f"local-{os.getpid()}-{next(self._ids)}"
        host_dir = self.root / host_id
        host_dir.mkdir()
        token = secrets.token_urlsafe(32)
        token_file = host_dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        log_path = host_dir / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "SLOT_SERVER_TOKEN"}
        env["PYTHONPATH"] = server_pythonpath()
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(host_dir, slots, image),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file, env=env, start_new_session=True,
            )
        _LIVE_SERVERS[proc.pid] = proc.pid
        self._procs[host_id] = proc
        try:
            ready = await asyncio.wait_for(self._read_ready(proc, log_path), self.start_timeout)
        except BaseException as e:
            await self._terminate(host_id)
            if isinstance(e, asyncio.TimeoutError):
                raise SandboxError(f"local slot server did not start within "
                                   f"{self.start_timeout:g}s; see {log_path}") from e
            raise
        log.info("started local slot server %s at %s (pid %d, isolation=%s)",
                 host_id, ready["url"], proc.pid, ready.get("isolation"))
        return Host(
            host_id=host_id, url=ready["url"], token=token, image=image, slots=slots,
            meta={"pid": proc.pid, "log": str(log_path), "isolation": ready.get("isolation"),
                  "workspace": ready.get("workspace")},
        )

    @staticmethod
    async def _read_ready(proc: asyncio.subprocess.Process, log_path: Path) -> dict:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                await proc.wait()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise SandboxError(f"local slot server exited with code {proc.returncode} "
                                   f"before it was ready: {' | '.join(tail) or 'no output'}")
            text = line.decode(errors="replace").strip()
            if text.startswith(READY_PREFIX):
                return json.loads(text[len(READY_PREFIX):])

    async def _terminate(self, host_id: str) -> None:
        proc = self._procs.pop(host_id, None)
        if proc is None:
            return
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 5.0)
                except asyncio.TimeoutError:
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
        finally:
            # Even when cancelled mid-wait: the process must not outlive its host record.
            if proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self._dying.add(proc)  # close() waits for its exit
            else:
                _LIVE_SERVERS.pop(proc.pid, None)
            await asyncio.to_thread(shutil.rmtree, self.root / host_id, True)

    async def stop_host(self, host: Host) -> None:
        await self._terminate(host.host_id)

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        return {h.host_id for h in hosts
                if (p := self._procs.get(h.host_id)) is not None and p.returncode is None}

    async def discover(self) -> list[Host]:
        return []  # servers exit with this process (--exit-with-parent): none to adopt

    async def close(self) -> None:
        await asyncio.gather(*(self._terminate(h) for h in list(self._procs)),
                             return_exceptions=True)
        dying, self._dying = list(self._dying), set()
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in dying),
                             return_exceptions=True)
        for p in dying:
            if p.returncode is not None:
                _LIVE_SERVERS.pop(p.pid, None)
        await asyncio.to_thread(shutil.rmtree, self.root, True)
