"""`python -m sandbox_image`: start a slot server.

Once listening, the server prints one line `SLOT_SERVER_READY {"url": ..., "port": ...,
"pid": ...}` on stdout (and writes the same JSON to --ready-file if given), so a launcher
using --port 0 learns the port without racing for it. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

from aiohttp import web

from sandbox_image.app import SlotServer, build_app
from sandbox_image.config import ConfigError, ServerConfig, config_from_args
from sandbox_image.disks import DiskError, SlotDisks
from sandbox_image.host_view import HostView
from sandbox_image.isolation import Bubblewrap, choose_workspace_path, exposed_paths
from sandbox_image.guard import ConnectionGuard
from sandbox_image.mounts import enter_private_mount_namespace
from sandbox_image.slot_images import SlotImageError, SlotImages
from sandbox_image.spawn import become_subreaper, reap_orphans

log = logging.getLogger("sandbox_image")
READY_PREFIX = "SLOT_SERVER_READY "


def _enter_mount_namespace(cfg: ServerConfig) -> str | None:
    """Before any thread exists: give the server a private mount namespace for the slot
    disks (see disks.py: nothing mounted leaks onto the host, even after a SIGKILL).
    Slot containers need it too: what they stage is mounted by the server.
    Returns why that is impossible, or None."""
    containers = cfg.limits.containers != "off" and cfg.limits.isolation != "none" \
        and os.geteuid() == 0
    if not cfg.limits.disk_mb and not containers:
        return None
    try:
        enter_private_mount_namespace()
    except OSError as e:
        return (f"cannot create a private mount namespace ({e.strerror}): the slot disks "
                "need root with CAP_SYS_ADMIN (in a container: --cap-add SYS_ADMIN)")
    return None


def _make_disks(cfg: ServerConfig, ns_problem: str | None,
                tmp_mount_points: list[str]) -> SlotDisks | None:
    if not cfg.limits.disk_mb:
        return None
    problem = ns_problem
    if problem is None:
        try:
            return SlotDisks(cfg.data_dir, cfg.limits.disk_mb, cfg.limits.inodes,
                             tmp_mount_points)
        except (DiskError, OSError) as e:
            problem = str(e)
    if cfg.limits.isolation in ("bwrap", "required"):
        raise ConfigError(f"isolation={cfg.limits.isolation} but the per-slot disk limits "
                          f"cannot be enforced: {problem}. Run the server as root with "
                          "CAP_SYS_ADMIN, or pass --disk-mb 0 to run without disk limits.")
    log.warning("DISK LIMITS DISABLED: %s; a slot can fill this host's disk. Use "
                "--isolation required to refuse this.", problem)
    return None


def _tmp_relative(paths: list[str]) -> list[str]:
    return [p[len("/tmp/"):] for p in paths if p.startswith("/tmp/")]


def _hidden(cfg: ServerConfig) -> list[str]:
    """Host paths masked wherever a host-view slot would see them."""
    hide = [str(cfg.data_dir), *cfg.hide]
    if cfg.image_store:
        hide.append(str(cfg.image_store))
    if cfg.token_file:
        hide.append(cfg.token_file)
    return hide


def _tmp_size(cfg: ServerConfig, disks: SlotDisks | None) -> int | None:
    return cfg.limits.disk_mb << 20 if disks is None and cfg.limits.disk_mb else None


def _resolve_isolation(cfg: ServerConfig, ns_problem: str | None = None
                       ) -> tuple[str, Bubblewrap | None, str, SlotDisks | None]:
    """-> (mode, bwrap or None, workspace path inside the sandbox, slot disks or None)."""
    limits = cfg.limits
    # The data dir must exist before the argv is built: only existing paths can be masked.
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if limits.isolation == "none":
        log.warning("ISOLATION DISABLED (--isolation none): commands run unsandboxed on the "
                    "host, with only rlimits/cgroups between them and this machine")
        return "none", None, "", _make_disks(cfg, ns_problem, [])
    inside = choose_workspace_path(cfg.workspace)
    expose = [sys.executable, *([cfg.host_python] if cfg.host_python else []), *limits.expose]
    disks = _make_disks(cfg, ns_problem, _tmp_relative([*exposed_paths(expose), inside]))
    bwrap = Bubblewrap(cfg.bwrap_path, network=limits.network, hide=_hidden(cfg),
                       expose=expose, tmp_size=_tmp_size(cfg, disks),
                       view=HostView(cfg.data_dir / "host-view"))
    if bwrap.exposed:
        log.info("exposed read-only inside slots: %s", ", ".join(bwrap.exposed))
    problem = bwrap.probe(inside)
    if problem is None:
        return "bwrap", bwrap, inside, disks
    if disks is not None:
        disks.close_sync([])
    if limits.isolation in ("bwrap", "required"):
        raise ConfigError(f"isolation={limits.isolation} but bubblewrap is unusable: {problem}. "
                          "Install bubblewrap (apt-get install bubblewrap) or allow "
                          "unprivileged user namespaces.")
    log.warning("ISOLATION DISABLED: bubblewrap is unusable (%s); commands run unsandboxed. "
                "Use --isolation required to refuse this.", problem)
    return "none", None, "", _make_disks(cfg, ns_problem, [])


async def _watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process %d is gone; shutting down", parent)
            stop.set()
            return
        await asyncio.sleep(0.5)


async def serve(cfg: ServerConfig, ns_problem: str | None = None) -> None:
    mode, bwrap, inside, disks = _resolve_isolation(cfg, ns_problem)
    images = SlotImages(cfg, isolation=mode, host_bwrap=bwrap, host_workspace=inside,
                        hide=_hidden(cfg), tmp_size=_tmp_size(cfg, disks))
    try:
        server = SlotServer(cfg, mode, bwrap, inside, disks, images)
    except BaseException:
        if disks is not None:
            disks.close_sync([])
        raise
    try:
        await server.start()  # the server's image, pulled and unpacked before READY
    except BaseException:
        await server.close()
        raise
    # keepalive_timeout: an idle kept-alive connection is closed after it (aiohttp's own).
    runner = web.AppRunner(build_app(server), access_log=None, handle_signals=False,
                           keepalive_timeout=30.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Reap the zombies bwrap leaves behind (see spawn.py); as PID 1 of a container the
    # server gets every orphan even if prctl is refused.
    if not become_subreaper() and os.getpid() != 1:
        log.warning("cannot become a child subreaper; init reaps the sandboxes' zombies")
    loop.add_signal_handler(signal.SIGCHLD, reap_orphans)
    watcher = asyncio.create_task(_watch_parent(stop)) if cfg.exit_with_parent else None
    listener: asyncio.Server | None = None
    try:
        guard = ConnectionGuard(runner.server, max_connections=cfg.max_connections,
                                header_timeout=cfg.header_timeout)
        server.connections = guard
        listener = await loop.create_server(guard, cfg.host, cfg.port, backlog=1024)
        host, port = listener.sockets[0].getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        ready = {"url": f"http://{url_host}:{port}", "port": port, "pid": os.getpid(),
                 "isolation": mode, "workspace": inside or None}
        if cfg.ready_file:
            tmp = cfg.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(ready, f)
            os.replace(tmp, cfg.ready_file)
        sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
        sys.stdout.flush()
        log.info("slot server %s: %d slots, isolation=%s, network=%s, limits=%s",
                 ready["url"], cfg.slots, mode, "on" if cfg.limits.network else "off",
                 server.health()["limits"])
        await stop.wait()
    finally:
        if watcher:
            watcher.cancel()
        if listener is not None:
            listener.close()
        await runner.cleanup()
        await server.close()
        log.info("slot server stopped")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, level = config_from_args(argv)
    except ConfigError as e:
        print(f"slot server: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns_problem = _enter_mount_namespace(cfg)  # still single-threaded here
    try:
        asyncio.run(serve(cfg, ns_problem))
    except (ConfigError, SlotImageError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
