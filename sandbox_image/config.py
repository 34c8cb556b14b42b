"""The slot server's configuration: `SlotLimits` (every per-slot limit, THE defaults) and the
command-line flags, parsed once into a frozen `ServerConfig`.

`SlotLimits` is the single source of the limit defaults: the server's flag defaults are
taken from `SlotLimits()`, and a launcher renders a limits object into flags with
`SlotLimits.to_argv()` (so `config_from_args(limits.to_argv() + [...]).limits == limits`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

TOKEN_ENV = "SLOT_SERVER_TOKEN"
ISOLATION_MODES = ("auto", "bwrap", "required", "none")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A command is run as `sh -c COMMAND`, one argv string, and the kernel refuses any single
# argv/env string over MAX_ARG_STRLEN (32 pages = 128 KiB, counting its NUL) with E2BIG.
MAX_ARG_STRLEN = 128 * 1024
MiB = 1 << 20


class ConfigError(ValueError):
    """A user-facing configuration mistake, shown as one line: the project's only such class
    (`rollout.config_model` re-exports it). It lives here because `sandbox_image` runs alone
    inside sandboxes and imports nothing of `rollout`."""


def _number_to_str(value: Any) -> Any:
    # Hydra reads `policy.model=7` as an int; a string key takes it as the text it was.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


# A string field of a strict config: a bare number from Hydra's command line is its text.
Str = Annotated[str, BeforeValidator(_number_to_str)]


HOST_IMAGE = "host"
# The label of the bundled tasks' image: the host view (their tests need only Python).
BUNDLED_IMAGE = "rollout-bundled:py311"
_OVERLAY_UNSAFE = re.compile(r"[,:\\\x00\n]")


class ImageSpec(BaseModel):
    """What a slot of one image label runs in (`sandbox.images.<label>`).

    source: `host` (the host view), an OCI layout dir or `docker save` / OCI archive path
        (`oci:`/`oci-archive:`/`docker-archive:` prefixes allowed), a registry reference,
        or `sha256:<hex>` of an image already in the store.
    workdir: the slot's writable path inside the image (the workspace); default `/testbed`
        if the image has it, else the image's WorkingDir, else the server's --workspace.
        What the image holds there is the slot's initial content, restored on every reset.
    python: the interpreter commands get as `python` (its bin dir goes first on PATH);
        default: a SWE-smith conda env `testbed` if the image has one, else the image's PATH
        (for `host`: the server's --host-python).
    env: extra environment for commands in this image (over the image's own Env).
    service: start the image's Entrypoint + Cmd in the background when a slot starts (it
        lives until the slot's reset, as Docker runs a container's command); default: for
        images built from a Dockerfile (`dockerfile:` sources) only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: Str = Field(HOST_IMAGE, min_length=1)
    workdir: Str | None = None
    python: Str | None = None
    env: dict[str, Str] = Field(default_factory=dict)
    service: bool | None = None

    @field_validator("workdir")
    @classmethod
    def _workdir_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/") or v.rstrip("/") == "" or ".." in v.split("/") \
                or _OVERLAY_UNSAFE.search(v):
            raise ValueError(f"workdir {v!r} must be an absolute path below / without '..', "
                             "commas, colons or backslashes")
        return v.rstrip("/")

    @field_validator("env")
    @classmethod
    def _env_ok(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env(env)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not ENV_KEY.match(key):
            raise ValueError(f"env key {key!r} is not a shell variable name")
        if "\x00" in value or len(value.encode()) >= MAX_ARG_STRLEN - len(key) - 1:
            raise ValueError(f"env value of {key} has a NUL byte or is over 128 KiB")
    return env


def _default_images() -> dict[str, ImageSpec]:
    return {BUNDLED_IMAGE: ImageSpec(source=HOST_IMAGE)}


class SlotLimits(BaseModel):
    """Every limit the slot server enforces on each slot, with the project's defaults.

    None means unlimited where a field allows it. Disk: each slot gets its own filesystem
    of `disk_mb` MiB and `inodes` inodes holding its workspace, /tmp and /dev/shm (one
    limit for all three; see `sandbox_image.disks` for why and what it costs).
    """

    # Strict like every config section (rollout.config_model): `memory_mb: "4096"` or
    # `network: "yes"` is refused, not coerced.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    isolation: Literal["auto", "bwrap", "required", "none"] = Field(
        "auto", description="auto: bubblewrap if usable, else run unsandboxed with a loud "
        "warning; bwrap/required: refuse to start without it (and without the disk limits); "
        "none: no sandbox")
    network: bool = Field(False, description="commands may use the network")
    memory_mb: int | None = Field(4096, ge=16, le=1 << 24,
                                  description="memory per slot (cgroup); None = unlimited")
    pids: int | None = Field(1024, ge=8, le=1 << 22,
                             description="processes per slot (cgroup); None = unlimited")
    output_cap: int = Field(1 * MiB, ge=1, le=256 * MiB,
                            description="bytes of stdout and of stderr kept per command")
    output_kill: int = Field(64 * MiB, ge=1, le=1 << 34,
                             description="a command is killed once it printed this many bytes")
    exec_timeout_cap: float = Field(1800.0, gt=0, le=7 * 86400,
                                    description="longest timeout (s) a command may ask for")
    file_cap: int = Field(64 * MiB, ge=1024, le=1 << 32,
                          description="size cap of read_file / archive / upload bodies")
    command_cap: int = Field(MAX_ARG_STRLEN - 1, ge=1, le=MAX_ARG_STRLEN - 1,
                             description="longest command in UTF-8 bytes (the kernel's "
                             "per-argument limit is the ceiling)")
    disk_mb: int | None = Field(4096, ge=16, le=16 << 20,
                                description="size of each slot's filesystem (workspace, /tmp, "
                                "/dev/shm); None = no disk limit (workspace on the host disk)")
    inodes: int | None = Field(262144, ge=1024, le=(1 << 32) - 1,
                               description="inodes of each slot's filesystem (only with "
                               "disk_mb); None = mkfs's default for that size")
    env: dict[str, Str] = Field(default_factory=dict, description="extra command environment")
    expose: tuple[Str, ...] = Field((), description="host dirs (or interpreters: their prefix) "
                                    "shown read-only inside host-view slots")
    images: dict[str, ImageSpec] = Field(
        default_factory=_default_images,
        description="image label (a task's image) -> what its slots run in; a label not "
        "listed is used as the source itself (a registry reference or archive path)")
    image_cache_mb: int = Field(20480, ge=64, le=1 << 30,
                                description="unpacked images kept per host (LRU beyond it)")
    image_sources: dict[str, str] = Field(
        default_factory=dict,
        description="image name (`ubuntu:22.04`) -> its source (an OCI layout dir, an OCI "
        "or docker save tar, or another reference such as a mirror), used by task images "
        "and Dockerfile FROM lines alike, so a mapped name never goes to its registry")
    build_network: bool = Field(False, description="Dockerfile RUN steps get a network of "
                                "their own (slirp4netns), whatever `network` says")
    build_args: dict[str, str] = Field(default_factory=dict,
                                       description="Dockerfile ARG values (over defaults)")
    writable: Literal["auto", "overlay", "copy"] = Field(
        "auto", description="how an image's workdir becomes the slot's private writable "
        "copy: an overlay mount on the slot's disk, or a copy made at reset (auto: overlay "
        "when the slot disks are on, else copy)")
    containers: Literal["auto", "on", "off"] = Field(
        "auto", description="one long-lived container per slot (own user, pid, ipc, uts and "
        "network namespaces; root inside is an unprivileged uid outside; background "
        "processes live until reset; a writable root in image slots): auto = when the "
        "host can (root, user namespaces, idmapped mounts), on = refuse to start without, "
        "off = a fresh sandbox per command")

    @field_validator("env")
    @classmethod
    def _env_ok(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env(env)

    def image_spec(self, label: str | None) -> ImageSpec:
        """What slots of `label` run in: the mapping's entry, else the label as a source."""
        if label is None or label == HOST_IMAGE:
            return self.images.get(HOST_IMAGE, ImageSpec())
        return self.images.get(label) or ImageSpec(source=label)

    @field_validator("expose", mode="before")
    @classmethod
    def _expose_list(cls, paths: Any) -> Any:
        return tuple(paths) if isinstance(paths, list) else paths  # YAML and JSON give lists

    @field_validator("expose")
    @classmethod
    def _expose_ok(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for p in paths:
            if not p or "\x00" in p:
                raise ValueError(f"expose entry {p!r} is empty or has a NUL byte")
        return paths

    @model_validator(mode="after")
    def _consistent(self) -> SlotLimits:
        if self.output_kill < self.output_cap:
            raise ValueError(f"output_kill ({self.output_kill}) must be >= output_cap "
                             f"({self.output_cap})")
        return self

    def to_argv(self) -> list[str]:
        """The slot-server flags that make a server enforce exactly these limits."""

        def n(v: int | None) -> str:
            return str(v or 0)  # 0 = unlimited on the command line

        argv = [
            f"--isolation={self.isolation}",
            f"--network={'on' if self.network else 'off'}",
            f"--memory-mb={n(self.memory_mb)}",
            f"--pids={n(self.pids)}",
            f"--output-cap={self.output_cap}",
            f"--output-kill={self.output_kill}",
            f"--exec-timeout-cap={self.exec_timeout_cap!r}",
            f"--file-cap={self.file_cap}",
            f"--command-cap={self.command_cap}",
            f"--disk-mb={n(self.disk_mb)}",
            f"--inodes={n(self.inodes)}",
        ]
        argv += [f"--env={k}={v}" for k, v in self.env.items()]
        argv += [f"--expose={p}" for p in self.expose]
        if self.images != _default_images():
            images = {k: v.model_dump(exclude_defaults=True) for k, v in self.images.items()}
            argv.append(f"--images={json.dumps(images, separators=(',', ':'))}")
        if self.image_sources:
            argv.append(f"--image-sources={json.dumps(self.image_sources, separators=(',', ':'))}")
        if self.build_args:
            argv.append(f"--build-args={json.dumps(self.build_args, separators=(',', ':'))}")
        if self.build_network:
            argv.append("--build-network=on")
        argv += [f"--image-cache-mb={self.image_cache_mb}", f"--writable={self.writable}",
                 f"--containers={self.containers}"]
        return argv


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem: `field: message`."""
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    token: str = field(repr=False)
    limits: SlotLimits = field(default_factory=SlotLimits)
    host: str = "127.0.0.1"
    port: int = 0
    slots: int = 4
    workspace: str = "/workspace"  # path of the workspace inside the sandbox
    hide: tuple[str, ...] = ()  # extra host paths masked inside the sandbox
    token_file: str | None = None
    ready_file: str | None = None
    bwrap_path: str = "bwrap"
    exit_with_parent: bool = False
    image: str = HOST_IMAGE  # the image label of every slot until a reset picks another
    image_store: Path | None = None  # default: <data_dir>/images
    host_python: str | None = None  # `python` of host-view slots
    uid_base: int = 100000  # host uid of root in a slot container; 65536 uids from there
    # required: a slot request must carry the slot's current lease (X-Slot-Lease), set by
    # the pool at acquire; optional: a lease is checked only when one is sent.
    leases: str = "optional"
    enter_helper: bool = True  # slot-enter (slot_enter.c) when it builds; off: nsenter + bwrap
    max_connections: int = 512  # open client connections; one more is closed at once
    header_timeout: float = 30.0  # seconds a new connection has to send its request's headers


_D = SlotLimits()


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
    p.add_argument("--isolation", choices=ISOLATION_MODES, default=_D.isolation)
    p.add_argument("--network", choices=("off", "on"), default="on" if _D.network else "off")
    p.add_argument("--memory-mb", type=int, default=_D.memory_mb or 0, help="0 = unlimited")
    p.add_argument("--pids", type=int, default=_D.pids or 0, help="0 = unlimited")
    p.add_argument("--output-cap", type=int, default=_D.output_cap,
                   help="bytes kept per stream")
    p.add_argument("--output-kill", type=int, default=_D.output_kill,
                   help="kill a command once it has printed this many bytes in total")
    p.add_argument("--exec-timeout-cap", "--max-timeout", dest="exec_timeout_cap", type=float,
                   default=_D.exec_timeout_cap,
                   help="longest timeout a command may ask for (longer ones are refused)")
    p.add_argument("--file-cap", type=int, default=_D.file_cap)
    p.add_argument("--command-cap", type=int, default=_D.command_cap,
                   help="longest command in bytes (at most the kernel's 128 KiB - 1)")
    p.add_argument("--disk-mb", type=int, default=_D.disk_mb or 0,
                   help="each slot's own filesystem (workspace, /tmp, /dev/shm); 0 = none")
    p.add_argument("--inodes", type=int, default=_D.inodes or 0,
                   help="inodes of each slot's filesystem; 0 = mkfs's default")
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
    p.add_argument("--images", default=None, metavar="JSON",
                   help="image label -> {source, workdir, python, env} (JSON object)")
    p.add_argument("--image", default=HOST_IMAGE, metavar="LABEL",
                   help="the image of every slot at start (a label of --images, a source, or "
                        "'host'); a reset may pick another per slot")
    p.add_argument("--image-store", default=None, metavar="DIR",
                   help="unpacked images, shared by the servers of a host (default "
                        "<data-dir>/images)")
    p.add_argument("--image-cache-mb", type=int, default=_D.image_cache_mb)
    p.add_argument("--image-sources", default=None, metavar="JSON",
                   help="image name -> source (OCI layout, archive, mirror reference), "
                        "for task images and Dockerfile FROM lines")
    p.add_argument("--build-args", default=None, metavar="JSON",
                   help="Dockerfile ARG values (JSON object)")
    p.add_argument("--build-network", choices=("off", "on"), default="off",
                   help="Dockerfile RUN steps get their own network (slirp4netns)")
    p.add_argument("--writable", choices=("auto", "overlay", "copy"), default=_D.writable,
                   help="how an image's workdir becomes writable per slot")
    p.add_argument("--host-python", default=None, metavar="PATH",
                   help="the `python` of host-view slots (shown read-only, first on PATH)")
    p.add_argument("--ready-file", help="write {url, port, pid} JSON here once listening")
    p.add_argument("--bwrap", default="bwrap", help="bubblewrap executable")
    p.add_argument("--containers", choices=("auto", "on", "off"), default=_D.containers,
                   help="one long-lived container per slot (auto: when this host can)")
    p.add_argument("--leases", choices=("optional", "required"), default="optional",
                   help="required: every slot request must carry the slot's current lease")
    p.add_argument("--enter-helper", choices=("on", "off"), default="on",
                   help="commands enter slot containers through the slot-enter helper when "
                   "it can be built (off: through nsenter and bwrap)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="open client connections at most (one more is closed at once)")
    p.add_argument("--header-timeout", type=float, default=30.0,
                   help="seconds a new connection has to send its first request's headers")
    p.add_argument("--uid-base", type=int, default=100000,
                   help="host uid of root inside slot containers (65536 uids from there)")
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


def limits_from_args(args: argparse.Namespace) -> SlotLimits:
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value

    def unlimited_if_zero(v: int) -> int | None:
        return None if v == 0 else v

    images = _D.images
    if args.images is not None:
        try:
            images = json.loads(args.images)
        except ValueError as e:
            raise ConfigError(f"--images is not JSON: {e}") from None
    extra: dict[str, dict[str, str]] = {}
    for flag, key in (("image_sources", "image_sources"), ("build_args", "build_args")):
        raw = getattr(args, flag)
        if raw is not None:
            try:
                extra[key] = json.loads(raw)
            except ValueError as e:
                raise ConfigError(f"--{flag.replace('_', '-')} is not JSON: {e}") from None
    try:
        return SlotLimits(
            **extra,
            build_network=args.build_network == "on",
            images=images,
            image_cache_mb=args.image_cache_mb,
            writable=args.writable,
            isolation=args.isolation,
            network=args.network == "on",
            memory_mb=unlimited_if_zero(args.memory_mb),
            pids=unlimited_if_zero(args.pids),
            output_cap=args.output_cap,
            output_kill=args.output_kill,
            exec_timeout_cap=args.exec_timeout_cap,
            file_cap=args.file_cap,
            command_cap=args.command_cap,
            disk_mb=unlimited_if_zero(args.disk_mb),
            inodes=unlimited_if_zero(args.inodes),
            env=env,
            expose=tuple(args.expose),
            containers=args.containers,
        )
    except ValidationError as e:
        raise ConfigError(f"bad limits: {describe_validation_error(e)}") from None


def config_from_args(argv: list[str] | None = None) -> tuple[ServerConfig, str]:
    """Parse flags; returns the config and the log level."""
    args = build_parser().parse_args(argv)
    if args.slots < 1:
        raise ConfigError("--slots must be at least 1")
    if not args.workspace.startswith("/"):
        raise ConfigError("--workspace must be an absolute path inside the sandbox")
    limits = limits_from_args(args)
    cfg = ServerConfig(
        data_dir=Path(args.data_dir).resolve(),
        token=_read_token(args),
        limits=limits,
        host=args.host,
        port=args.port,
        slots=args.slots,
        workspace=args.workspace.rstrip("/") or "/workspace",
        hide=tuple(args.hide),
        token_file=str(Path(args.token_file).resolve()) if args.token_file else None,
        ready_file=args.ready_file,
        bwrap_path=args.bwrap,
        exit_with_parent=args.exit_with_parent,
        image=args.image,
        image_store=Path(args.image_store).resolve() if args.image_store else None,
        host_python=args.host_python,
        uid_base=args.uid_base,
        leases=args.leases,
        max_connections=args.max_connections,
        enter_helper=args.enter_helper == "on",
        header_timeout=args.header_timeout,
    )
    return cfg, args.log_level
