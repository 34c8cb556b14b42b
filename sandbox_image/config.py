"""Command-line flags of the slot server, parsed once into a frozen `ServerConfig`."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "SLOT_SERVER_TOKEN"
ISOLATION_MODES = ("auto", "bwrap", "required", "none")


class ConfigError(Exception):
    """A flag combination the server cannot run with (message is shown to the user)."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    slots: int = 4
    isolation: str = "auto"
    network: bool = False
    memory_mb: int | None = 2048
    pids: int | None = 512
    output_cap: int = 1 << 20  # bytes kept per stream
    output_kill: int = 64 << 20  # total bytes after which a command is killed
    max_timeout: float = 3600.0
    file_cap: int = 64 << 20  # read_file / archive / upload size cap
    workspace: str = "/workspace"  # path of the workspace inside the sandbox
    extra_env: dict[str, str] = field(default_factory=dict)
    hide: tuple[str, ...] = ()  # extra host paths masked inside the sandbox
    expose: tuple[str, ...] = ()  # host dirs shown read-only even under the private /tmp
    token_file: str | None = None
    ready_file: str | None = None
    bwrap_path: str = "bwrap"
    exit_with_parent: bool = False


def _positive_or_none(text: str) -> int | None:
    value = int(text)
    return value if value > 0 else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sandbox_image",
        description="Slot server: N isolated workspaces behind a token-authenticated HTTP API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port and announces it")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--data-dir", required=True, help="holds the slot workspaces")
    p.add_argument("--token-file", help=f"file holding the bearer token (else ${TOKEN_ENV})")
    p.add_argument("--isolation", choices=ISOLATION_MODES, default="auto")
    p.add_argument("--network", choices=("off", "on"), default="off")
    p.add_argument("--memory-mb", type=_positive_or_none, default=2048, help="0 = unlimited")
    p.add_argument("--pids", type=_positive_or_none, default=512, help="0 = unlimited")
    p.add_argument("--output-cap", type=int, default=1 << 20, help="bytes kept per stream")
    p.add_argument("--output-kill", type=int, default=64 << 20,
                   help="kill a command once it has printed this many bytes in total")
    p.add_argument("--max-timeout", type=float, default=3600.0)
    p.add_argument("--file-cap", type=int, default=64 << 20)
    p.add_argument("--workspace", default="/workspace",
                   help="workspace path inside the sandbox (falls back to /tmp/workspace)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra default environment for commands (repeatable)")
    p.add_argument("--hide", action="append", default=[], metavar="PATH",
                   help="host path to mask inside the sandbox (repeatable)")
    p.add_argument("--expose", action="append", default=[], metavar="PATH",
                   help="host directory, or interpreter (its prefix), shown read-only inside "
                        "the sandbox even where the private /tmp hides it; the server's own "
                        "interpreter always is (repeatable)")
    p.add_argument("--ready-file", help="write {url, port, pid} JSON here once listening")
    p.add_argument("--bwrap", default="bwrap", help="bubblewrap executable")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="exit when the process that started the server dies")
    p.add_argument("--log-level", default="INFO")
    return p


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {e.strerror}") from e
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    # The token must never reach a sandboxed command through the inherited environment.
    os.environ.pop(TOKEN_ENV, None)
    if len(token) < 16:
        raise ConfigError(
            f"no usable token: set ${TOKEN_ENV} or --token-file to a secret of >= 16 characters"
        )
    return token


def config_from_args(argv: list[str] | None = None) -> tuple[ServerConfig, str]:
    """Parse flags; returns the config and the log level."""
    args = build_parser().parse_args(argv)
    if args.slots < 1:
        raise ConfigError("--slots must be at least 1")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    if not args.workspace.startswith("/"):
        raise ConfigError("--workspace must be an absolute path inside the sandbox")
    cfg = ServerConfig(
        data_dir=Path(args.data_dir).resolve(),
        token=_read_token(args),
        host=args.host,
        port=args.port,
        slots=args.slots,
        isolation=args.isolation,
        network=args.network == "on",
        memory_mb=args.memory_mb,
        pids=args.pids,
        output_cap=args.output_cap,
        output_kill=max(args.output_kill, args.output_cap),
        max_timeout=args.max_timeout,
        file_cap=args.file_cap,
        workspace=args.workspace.rstrip("/") or "/workspace",
        extra_env=env,
        hide=tuple(args.hide),
        expose=tuple(args.expose),
        token_file=str(Path(args.token_file).resolve()) if args.token_file else None,
        ready_file=args.ready_file,
        bwrap_path=args.bwrap,
        exit_with_parent=args.exit_with_parent,
    )
    return cfg, args.log_level
