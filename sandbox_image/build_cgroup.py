"""The memory and pids limits of one image build: a cgroup of its own (v2, or the v1 memory
and pids hierarchies) under the server's cgroup, removed when the build ends. Each step's
process joins it before exec (`wrapper`), so a fork bomb or a memory hog in a RUN hits the
build's limits, never the server's or a slot's. `events()` tells why a step died."""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
from pathlib import Path

from sandbox_image.limits import CGROUP_ROOT, _own_cgroup_paths, _remove_tree

log = logging.getLogger(__name__)


class BuildCgroup:
    def __init__(self, memory_bytes: int | None, pids: int | None) -> None:
        self.memory_bytes = memory_bytes
        self.pids = pids
        self.groups: dict[str, Path] = {}  # controller ("" for v2) -> dir
        self.v2 = False
        if memory_bytes is None and pids is None:
            return
        name = f"image-build-{secrets.token_hex(6)}"
        own = _own_cgroup_paths()
        try:
            if "" in own and (CGROUP_ROOT / "cgroup.controllers").exists() and \
                    {"memory", "pids"} <= set((CGROUP_ROOT / "cgroup.controllers").read_text().split()):
                g = CGROUP_ROOT / own[""].lstrip("/") / name
                g.mkdir()
                self.groups[""] = g
                self.v2 = True
                if memory_bytes:
                    (g / "memory.max").write_text(str(memory_bytes))
                    with contextlib.suppress(OSError):
                        (g / "memory.swap.max").write_text("0")
                if pids:
                    (g / "pids.max").write_text(str(pids))
                return
            for controller, limit in (("memory", memory_bytes), ("pids", pids)):
                if limit is None or controller not in own:
                    continue
                root = CGROUP_ROOT / controller
                if not (root / "cgroup.procs").exists():
                    continue
                g = root / own[controller].lstrip("/") / name
                g.mkdir()
                self.groups[controller] = g
                if controller == "memory":
                    (g / "memory.limit_in_bytes").write_text(str(limit))
                    with contextlib.suppress(OSError):
                        (g / "memory.memsw.limit_in_bytes").write_text(str(limit))
                else:
                    (g / "pids.max").write_text(str(limit))
        except OSError as e:
            self.close()
            raise OSError(e.errno, f"cannot make the build's cgroup: {e.strerror or e}") from e

    def wrapper(self) -> list[str]:
        """argv prefix that moves the process into the build's cgroups, then execs."""
        if not self.groups:
            return []
        steps = [f"echo $$ > {shlex.quote(str(g / 'cgroup.procs'))} || exit 125"
                 for g in self.groups.values()]
        return ["/bin/sh", "-c", "; ".join([*steps, 'exec "$@"']), "build-wrap"]

    def _read(self, controller: str, name: str) -> dict[str, int]:
        g = self.groups.get("" if self.v2 else controller)
        out: dict[str, int] = {}
        if g is None:
            return out
        with contextlib.suppress(OSError):
            for line in (g / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = int(value)
        return out

    def events(self) -> tuple[int, int]:
        """(OOM kills, forks refused at the pids limit) so far."""
        oom = self._read("memory", "memory.events" if self.v2 else "memory.oom_control")
        pids = self._read("pids", "pids.events")
        return oom.get("oom_kill", 0), pids.get("max", 0)

    def memory_failures(self) -> int:
        """v1: times the limit was hit (memory.failcnt), a fallback when oom_kill is absent."""
        g = self.groups.get("memory")
        if g is None:
            return 0
        try:
            return int((g / "memory.failcnt").read_text())
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        for g in self.groups.values():
            try:
                _remove_tree(g)
            except OSError as e:
                log.warning("could not remove build cgroup %s: %s", g, e)
        self.groups.clear()
