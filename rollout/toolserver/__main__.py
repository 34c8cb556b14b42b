"""`python -m rollout.toolserver [--host H] [--port P] (--config JSON | --config-file PATH)`.

Prints `tool server listening on http://H:P` once it accepts calls (launch.py reads it).
The bearer token is read from $ROLLOUT_TOOL_SERVER_TOKEN. Exit 2 on a bad config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from rollout.toolserver.server import TOKEN_ENV, ToolServer


async def serve(server: ToolServer, host: str, port: int) -> None:
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"tool server listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rollout.toolserver")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", default=None)
    ap.add_argument("--config-file", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        text = Path(args.config_file).read_text() if args.config_file else (args.config or "{}")
        config = json.loads(text)
        server = ToolServer(config, os.environ.get(TOKEN_ENV, ""))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(server, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
