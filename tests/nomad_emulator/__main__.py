"""Run the emulator as a process: prints `NOMAD_EMULATOR_READY {"url", "control_url"}`.

    python -m tests.nomad_emulator --data-dir DIR [--port P] [--control-port C] [--token T]

SIGTERM/SIGINT stop it; its allocation processes die with it (PR_SET_PDEATHSIG, and a kill
of every allocation process group on the way out).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import signal
import sys

from tests.nomad_emulator.app import EmulatorServer
from tests.nomad_emulator.state import kill_everything

READY = "NOMAD_EMULATOR_READY "


async def main(args: argparse.Namespace) -> None:
    server = EmulatorServer(args.data_dir, token=os.environ.get("NOMAD_EMULATOR_TOKEN"),
                            nodes=args.nodes, placement_delay=args.placement_delay,
                            port=args.port, control_port=args.control_port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(READY + json.dumps({"url": server.url, "control_url": server.control_url,
                                         "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tests.nomad_emulator")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--placement-delay", type=float, default=0.0)
    p.add_argument("--log-level", default="WARNING")
    parsed = p.parse_args()
    logging.basicConfig(level=parsed.log_level)
    atexit.register(kill_everything)
    asyncio.run(main(parsed))
