"""The containers of one slot server's slots (container.py): whether this host can run them,
each slot's current one, starting it again when a command took it down, and stopping them.

Guarantees: `get(i)` returns slot i's container running (or None without containers); a
container that ended under a command is started once again however many requests ask at
the same moment; after `stop(i)` nothing of slot i's container is alive.
"""

from __future__ import annotations

import asyncio
import logging
import os

from sandbox_image.config import ConfigError, ServerConfig
from sandbox_image.container import ContainerError, IdmappedRoots, Runtime, SlotContainer, Stage
from sandbox_image.slot_images import SlotImageError
from sandbox_image.userns import IdRange

log = logging.getLogger(__name__)


class SlotContainers:
    def __init__(self, cfg: ServerConfig, isolation: str) -> None:
        self.runtime = _runtime(cfg, isolation)
        self.owner = self.runtime.ids.base if self.runtime else None  # root's host uid
        self._current: list[SlotContainer | None] = [None] * cfg.slots
        self._restarts: dict[int, asyncio.Task[None]] = {}
        self._lowers = IdmappedRoots(str(cfg.data_dir), self.runtime.ids) if self.runtime else None
        # One Stage for all the slots' containers, made before any slot disk is mounted
        # (its alias of the data dir must see every later mount: container.Stage).
        self._stage = (Stage(os.path.join(self.runtime.stage_dir, "s"), str(cfg.data_dir),
                             self._lowers.clone if self._lowers else None)
                       if self.runtime else None)

    @property
    def enabled(self) -> bool:
        return self.runtime is not None

    def current(self, i: int) -> SlotContainer | None:
        return self._current[i]

    async def lower(self, digest: str, rootfs: str) -> str:
        """The image's root filesystem as its slots' root overlays show it (idmapped)."""
        assert self._lowers is not None
        return await self._lowers.get(digest, rootfs)

    async def start(self, i: int, mounts: list[str], wrapper: list[str],
                    joins: list[str] | None) -> None:
        assert self.runtime is not None
        container = SlotContainer(self.runtime, mounts, wrapper, joins, stage=self._stage)
        try:
            await container.start()
        except ContainerError as e:
            raise SlotImageError(str(e), 500) from None
        self._current[i] = container

    async def get(self, i: int) -> SlotContainer | None:
        """Slot i's container, running: one that ended under a command (a `kill -9 -1`
        took its init) is started again on the same files."""
        c = self._current[i]
        if c is None or c.alive:
            return c
        task = self._restarts.get(i)
        if task is None:
            log.warning("slot %d: its container ended; starting it again (same files)", i)
            task = self._restarts[i] = asyncio.ensure_future(c.start())
            task.add_done_callback(lambda _t: self._restarts.pop(i, None))
        try:
            await asyncio.shield(task)
        except ContainerError as e:
            raise SlotImageError(str(e), 500) from None
        return c

    async def stop(self, i: int) -> None:
        c, self._current[i] = self._current[i], None
        if c is not None:
            await c.close()

    async def close(self) -> None:
        for i in range(len(self._current)):
            await self.stop(i)
        if self._stage is not None:
            await asyncio.to_thread(self._stage.close)
        if self._lowers is not None:
            await asyncio.to_thread(self._lowers.close)
        if self.runtime is not None:
            self.runtime.close()


def _runtime(cfg: ServerConfig, isolation: str) -> Runtime | None:
    """Slot containers when this server can run them, else None: the fallback is a fresh
    bubblewrap per command."""
    mode = cfg.limits.containers
    if isolation != "bwrap" or mode == "off":
        return None
    try:
        return Runtime.create(str(cfg.data_dir), cfg.bwrap_path, IdRange(cfg.uid_base),
                              cfg.limits.network, cfg.enter_helper)
    except ContainerError as e:
        if mode == "on":
            raise ConfigError(f"--containers on, but {e}") from None
        log.warning("slot containers unavailable (%s): each command gets a fresh sandbox, "
                    "and processes do not outlive their command", e)
        return None
