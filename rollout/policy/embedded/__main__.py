"""Run the embedded policy server: `python -m rollout.policy.embedded --port 0 --ready-file F`.

With `--port 0` the OS picks a free port; once the model is loaded and the server listens, the
bound address is written to the ready file as JSON ({"host", "port", "base_url", "pid"}) by an
atomic rename, so a launcher never races on ports or reads a half-written file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

log = logging.getLogger("rollout.policy.embedded")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m rollout.policy.embedded", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (see --ready-file)")
    ap.add_argument("--ready-file", type=Path, help="write the bound address here once serving")
    ap.add_argument("--cache-dir", type=Path, help="converted-checkpoint cache (default: $ROLLOUT_CACHE_DIR/embedded)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-context", type=int, default=None)
    ap.add_argument("--prefix-cache-tokens", type=int, default=32768,
                    help="KV of finished sequences kept for prompts that extend them (0 = off)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--model-name", default=None, help="name reported by /v1/models")
    ap.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def write_ready_file(path: Path, host: str, port: int) -> None:
    info = {"host": host, "port": port, "base_url": f"http://{host}:{port}", "pid": os.getpid()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    from .engine import BatchedEngine
    from .model import load_model
    from .server import create_app

    loop = asyncio.get_running_loop()
    loaded = await loop.run_in_executor(None, lambda: load_model(args.cache_dir, threads=args.threads))
    engine = BatchedEngine(
        loaded,
        max_batch_size=args.max_batch_size,
        max_context=args.max_context,
        prefix_cache_tokens=args.prefix_cache_tokens,
    )
    # handler_cancellation: a client that hangs up cancels its generation (frees its row).
    runner = web.AppRunner(
        create_app(engine, model_name=args.model_name),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    log.info("embedded policy serving %s at http://%s:%d", loaded.name, args.host, port)
    if args.ready_file:
        write_ready_file(args.ready_file, args.host, port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                if args.exit_with_parent and os.getppid() != parent:
                    log.warning("parent process %d is gone; shutting down", parent)
                    break
    finally:
        await engine.stop()  # fails requests still decoding, so their handlers return now
        await runner.cleanup()
        log.info("embedded policy stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
