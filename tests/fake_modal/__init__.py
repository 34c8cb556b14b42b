"""A fake of the parts of the `modal` SDK (1.6) that `rollout.sandbox.modal` uses.

Substituted by import path in tests only (`backend.sdk=tests.fake_modal`); the backend's
code path is the one that runs against the real SDK. Names, signatures and defaults follow
the installed `modal` package (tests/sandbox/test_modal_fake.py compares them with
`inspect.signature`); every method has its blocking form and `.aio`.

Each sandbox really runs its entrypoint as local processes (see `_supervisor.py`), reachable
through tunnels; `timeout` and `idle_timeout` are enforced; the control plane is a directory
(`$FAKE_MODAL_DIR`, see `_control.py`) so sandboxes outlive the client, as on Modal.
Modal's waits and refusals are reproduced (see `_control.Faults`): the first create() of an
image recipe spends the image's build time inside create(), a created sandbox waits for a
worker and then cold-starts before its entrypoint runs, creations past a rate limit or an
injected quota are refused with ResourceExhaustedError, and create() refuses what modal 1.6
refuses (InvalidError: open ports with `block_network`, allowlists with it).
Deviations: tunnels are plain TCP on loopback (`Tunnel.url` is http://, not https://);
nothing is installed by a build: an image is "python plus the local sources added to it",
i.e. this machine's interpreter and the named modules' directories; without `block_network`
a sandbox still has no network (only its own loopback).
"""

from __future__ import annotations

import asyncio
import collections.abc
import hashlib
import importlib.util
import json
import os
import secrets as _secrets
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_modal import _control, exception
from tests.fake_modal._dual import dual
from tests.fake_modal.exception import (
    NotFoundError,
    ResourceExhaustedError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)

# PATH of a python image (e.g. python:3.11-slim), not the client's.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

__all__ = ["App", "ContainerProcess", "Image", "Sandbox", "Secret", "Tunnel", "exception"]


class App:
    def __init__(self, name: str, app_id: str) -> None:
        self.name = name
        self.app_id = app_id

    @staticmethod
    @dual
    async def lookup(name: str, *, client: Any = None, environment_name: str | None = None,
                     create_if_missing: bool = False) -> App:
        path = _control.root() / "apps" / name
        with _control.locked():
            if not path.exists():
                if not create_if_missing:
                    raise NotFoundError(f"App '{name}' not found")
                path.write_text("ap-" + hashlib.sha256(name.encode()).hexdigest()[:20])
        return App(name, path.read_text())


class Secret:
    def __init__(self, env: dict[str, str | None]) -> None:
        self._env = env

    @staticmethod
    def from_dict(env_dict: dict[str, str | None] = {}) -> Secret:  # noqa: B006 - modal's
        return Secret(dict(env_dict))

    @staticmethod
    def from_name(name: str, *, environment_name: str | None = None,
                  required_keys: list[str] = [],  # noqa: B006 - modal's
                  client: Any = None) -> Secret:
        """A named secret: `$FAKE_MODAL_DIR/secrets/<name>.json` (a test writes it)."""
        env = _control.read_json(_control.root() / "secrets" / f"{name}.json")
        if env is None:
            raise NotFoundError(f"Secret '{name}' not found")
        missing = [k for k in required_keys if k not in env]
        if missing:
            raise NotFoundError(f"Secret '{name}' lacks keys {missing}")
        return Secret(env)

    def __repr__(self) -> str:
        return f"Secret({sorted(self._env)})"  # never the values


@dataclass(frozen=True)
class Image:
    """A recipe. The fake records it and runs the sandbox with this machine's interpreter
    and the local sources added (the packages are assumed installed here)."""

    steps: tuple[tuple[str, Any], ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()
    sources: tuple[str, ...] = field(default=())

    def _with(self, step: str, value: Any, **changes: Any) -> Image:
        return Image(steps=(*self.steps, (step, value)),
                     env_vars=changes.get("env_vars", self.env_vars),
                     sources=changes.get("sources", self.sources))

    @staticmethod
    def from_registry(tag: str, secret: Secret | None = None, *,
                      setup_dockerfile_commands: list[str] = [],  # noqa: B006 - modal's
                      force_build: bool = False, add_python: str | None = None,
                      **kwargs: Any) -> Image:
        if not tag:
            raise exception.InvalidError("Image.from_registry needs a tag")
        return Image(steps=(("from_registry", {"tag": tag, "add_python": add_python}),))

    def pip_install(self, *packages: str | list[str], find_links: str | None = None,
                    index_url: str | None = None, extra_index_url: str | None = None,
                    pre: bool = False, extra_options: str = "", force_build: bool = False,
                    env: dict[str, str | None] | None = None,
                    secrets: collections.abc.Collection[Secret] | None = None,
                    gpu: str | None = None) -> Image:
        return self._with("pip_install", _flat(packages))

    def apt_install(self, *packages: str | list[str], force_build: bool = False,
                    env: dict[str, str | None] | None = None,
                    secrets: collections.abc.Collection[Secret] | None = None,
                    gpu: str | None = None) -> Image:
        return self._with("apt_install", _flat(packages))

    def run_commands(self, *commands: str | list[str],
                     env: dict[str, str | None] | None = None,
                     secrets: collections.abc.Collection[Secret] | None = None,
                     volumes: dict[Any, Any] | None = None, gpu: str | None = None,
                     force_build: bool = False) -> Image:
        return self._with("run_commands", _flat(commands))

    def env(self, vars: dict[str, str]) -> Image:  # noqa: A002 - modal's name
        return self._with("env", dict(vars), env_vars=(*self.env_vars, *vars.items()))

    def add_local_python_source(self, *modules: str, copy: bool = False) -> Image:
        dirs = []
        for module in modules:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise exception.InvalidError(f"module {module!r} is not a local package")
            dirs.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
        return self._with("add_local_python_source", list(modules),
                          sources=(*self.sources, *dirs))


async def _build(image: Image) -> None:
    """Modal builds an image the first time a sandbox uses it (inside create(), which
    blocks meanwhile), then reuses it. The fake spends `Faults.image_build` seconds on a
    recipe not built before and records it under images/."""
    recipe = hashlib.sha256(repr(image.steps).encode()).hexdigest()[:16]
    marker = _control.root() / "images" / recipe
    if marker.exists():
        return
    seconds = _control.Faults.load().image_build
    if seconds:
        await asyncio.sleep(seconds)
    marker.parent.mkdir(exist_ok=True)
    _control.write_json(marker, {"steps": [list(s) for s in image.steps],
                                 "built_at": time.time(), "seconds": seconds})


def _flat(items: tuple[Any, ...]) -> list[str]:
    return [x for item in items for x in (item if isinstance(item, list) else [item])]


@dataclass(frozen=True)
class Tunnel:
    host: str
    port: int
    unencrypted_host: str
    unencrypted_port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"  # the fake's tunnel has no TLS


class StreamReader:
    def __init__(self, read: Any) -> None:
        self._read = read

    @dual
    async def read(self) -> str | bytes:
        return await self._read()


class ContainerProcess:
    """An `exec` in a sandbox. `returncode` is only meaningful after `wait()`."""

    def __init__(self, proc: asyncio.subprocess.Process, text: bool) -> None:
        self._proc = proc
        self._text = text
        self.stdout = StreamReader(lambda: self._drain(proc.stdout))
        self.stderr = StreamReader(lambda: self._drain(proc.stderr))

    async def _drain(self, stream: asyncio.StreamReader | None) -> str | bytes:
        data = await stream.read() if stream is not None else b""
        return data.decode(errors="replace") if self._text else data

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @dual
    async def poll(self) -> int | None:
        return self._proc.returncode

    @dual
    async def wait(self) -> int:
        return await self._proc.wait()


@dataclass
class FileInfo:
    path: str
    type: str
    size: int
    mtime: float


class SandboxFilesystem:
    """`sandbox.filesystem`: the sandbox's own view of its files (through its mount
    namespace, `/proc/<pid>/root`)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    async def _path(self, remote_path: str) -> Path:
        if not remote_path.startswith("/"):
            raise exception.InvalidError(f"remote path must be absolute: {remote_path!r}")
        return Path(f"/proc/{await self._sb._entry_pid()}/root{remote_path}")

    @dual
    async def read_bytes(self, remote_path: str) -> bytes:
        return await asyncio.to_thread((await self._path(remote_path)).read_bytes)

    @dual
    async def read_text(self, remote_path: str) -> str:
        return (await self.read_bytes.aio(remote_path)).decode()

    @dual
    async def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> None:
        await asyncio.to_thread((await self._path(remote_path)).write_bytes, bytes(data))

    @dual
    async def write_text(self, data: str, remote_path: str) -> None:
        await self.write_bytes.aio(data.encode(), remote_path)

    @dual
    async def make_directory(self, remote_path: str, *, create_parents: bool = True) -> None:
        (await self._path(remote_path)).mkdir(parents=create_parents, exist_ok=True)

    @dual
    async def list_files(self, remote_path: str) -> list[FileInfo]:
        base = await self._path(remote_path)
        return [FileInfo(str(Path(remote_path) / p.name), "dir" if p.is_dir() else "file",
                         p.stat().st_size, p.stat().st_mtime) for p in base.iterdir()]


class Sandbox:
    def __init__(self, sandbox_id: str) -> None:
        self.object_id = sandbox_id
        self._detached = False

    def __repr__(self) -> str:
        return f"Sandbox({self.object_id})"

    def _check(self) -> None:
        if self._detached:
            raise exception.Error("this Sandbox object was detached; use Sandbox.from_id")

    def _touch(self) -> None:
        _control.sandbox_path(self.object_id, ".activity").touch()

    async def _entry_pid(self) -> int:
        """The entrypoint's pid once the sandbox runs (exec and file calls wait for its
        start, as on Modal)."""
        self._check()
        deadline = time.monotonic() + 60
        while (run := _control.run_record(self.object_id)) is None:
            if not _control.running(self.object_id) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)  # the fake's control plane is a directory: poll it
        if run is None or not _control.running(self.object_id):
            raise SandboxTerminatedError(f"sandbox {self.object_id} is not running")
        self._touch()
        return run["entry_pid"]

    # --- create / look up -----------------------------------------------------------------

    @staticmethod
    @dual
    async def create(*args: str, app: App | None = None, name: str | None = None,
                     tags: dict[str, str] | None = None, image: Image | None = None,
                     env: dict[str, str | None] | None = None,
                     secrets: collections.abc.Collection[Secret] | None = None,
                     timeout: int | None = 300, idle_timeout: int | None = None,
                     workdir: str | None = None, gpu: str | None = None,
                     cloud: str | None = None, cpu: float | tuple[float, float] | None = None,
                     memory: int | tuple[int, int] | None = None, block_network: bool = False,
                     outbound_cidr_allowlist: collections.abc.Sequence[str] | None = None,
                     outbound_domain_allowlist: collections.abc.Sequence[str] | None = None,
                     encrypted_ports: collections.abc.Sequence[int] = [],  # noqa: B006
                     unencrypted_ports: collections.abc.Sequence[int] = [],  # noqa: B006
                     verbose: bool = False) -> Sandbox:
        if app is None:
            raise exception.InvalidError("Sandbox.create needs an app outside a Modal container")
        if not args:
            raise exception.InvalidError("the fake runs an entrypoint; none was given")
        if block_network and (encrypted_ports or unencrypted_ports):  # modal 1.6's check
            raise exception.InvalidError(
                "Cannot specify open ports when `block_network` is enabled")
        if block_network and (outbound_cidr_allowlist or outbound_domain_allowlist):
            raise exception.InvalidError("block_network cannot be combined with allowlists")
        image = image or Image()
        await _build(image)
        with _control.locked():
            faults = _control.Faults.load()
            now = time.time()
            if faults.throttle_next > 0:
                faults.throttle_next -= 1
                faults.save()
                raise ResourceExhaustedError("Sandbox creation rate limit exceeded (injected)")
            if faults.rate_limit and sum(1 for c in _control.creations()
                                         if now - c["t"] < 1.0) >= faults.rate_limit:
                raise ResourceExhaustedError("Sandbox creation rate limit exceeded")
            sandbox_id = "sb-" + _secrets.token_hex(10)
            with open(_control.root() / "creations.jsonl", "a") as f:
                f.write(json.dumps({"id": sandbox_id, "t": now}) + "\n")
        merged: dict[str, str] = {"PATH": IMAGE_PATH, **dict(image.env_vars)}
        for source in [{"PYTHONPATH": ":".join(image.sources)}, *(s._env for s in secrets or ()),
                       env or {}]:
            merged.update({k: v for k, v in source.items() if v is not None})
        # The image's /usr/local/bin has its python (add_python): this machine's interpreter.
        bindir = _control.sandbox_path(sandbox_id, ".bin")
        bindir.mkdir()
        for exe in ("python", "python3"):
            (bindir / exe).write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            (bindir / exe).chmod(0o755)
        spec = {
            "id": sandbox_id, "app_id": app.app_id, "name": name, "args": list(args),
            "env": merged, "workdir": workdir, "timeout": timeout, "idle_timeout": idle_timeout,
            "created_at": now, "encrypted_ports": list(encrypted_ports),
            "unencrypted_ports": list(unencrypted_ports), "start_delay": faults.start_delay,
            "schedule_delay": faults.schedule_delay,
            "binds": [p for p in {sys.prefix, sys.base_prefix, *image.sources}
                      if p.startswith("/tmp/")],
            "resources": {"cpu": cpu, "memory": memory, "gpu": gpu, "cloud": cloud},
            "network": {"block_network": block_network,
                        "cidr": list(outbound_cidr_allowlist or []),
                        "domains": list(outbound_domain_allowlist or [])},
            "image": [list(s) for s in image.steps],
        }
        spec_path = _control.sandbox_path(sandbox_id, ".json")
        _control.write_json(_control.sandbox_path(sandbox_id, ".tags.json"), dict(tags or {}))
        _control.write_json(spec_path, spec)
        project = str(Path(__file__).resolve().parents[2])
        sup = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_modal._supervisor", sandbox_id],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(_control.sandbox_path(sandbox_id, ".supervisor.log"), "wb"),
            cwd=project, env={**os.environ, "PYTHONPATH": project}, start_new_session=True)
        spec["supervisor"] = {"pid": sup.pid, "start_time": _control.start_time(sup.pid)}
        _control.write_json(spec_path, spec)
        return Sandbox(sandbox_id)

    @staticmethod
    @dual
    async def from_id(sandbox_id: str, client: Any = None) -> Sandbox:
        if _control.read_json(_control.sandbox_path(sandbox_id, ".json")) is None:
            raise NotFoundError(f"Sandbox {sandbox_id} not found")
        return Sandbox(sandbox_id)

    @staticmethod
    @dual
    async def list(*, app_id: str | None = None, tags: dict[str, str] | None = None,
                   client: Any = None) -> AsyncGenerator[Sandbox, None]:
        """Running sandboxes (of `app_id`, carrying all of `tags`), newest first."""
        found = []
        for sid in _control.all_ids():
            spec = _control.read_json(_control.sandbox_path(sid, ".json")) or {}
            have = _control.read_json(_control.sandbox_path(sid, ".tags.json")) or {}
            if (_control.running(sid) and (app_id is None or spec.get("app_id") == app_id)
                    and all(have.get(k) == v for k, v in (tags or {}).items())):
                found.append((spec["created_at"], sid))
        for _, sid in sorted(found, reverse=True):
            yield Sandbox(sid)

    # --- tags -----------------------------------------------------------------------------

    @dual
    async def set_tags(self, tags: dict[str, str], *, client: Any = None) -> None:
        self._check()
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise exception.InvalidError("tags must be str -> str")
        _control.write_json(_control.sandbox_path(self.object_id, ".tags.json"), dict(tags))

    @dual
    async def get_tags(self) -> dict[str, str]:
        self._check()
        return _control.read_json(_control.sandbox_path(self.object_id, ".tags.json")) or {}

    # --- lifecycle ------------------------------------------------------------------------

    @dual
    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        self._check()
        deadline = time.monotonic() + timeout
        while True:
            run = _control.run_record(self.object_id)
            if run is not None:
                return {int(p): Tunnel(h, port, h, port) for p, (h, port) in
                        run["tunnels"].items()}
            if not _control.running(self.object_id):
                raise SandboxTerminatedError(f"sandbox {self.object_id} ended before its "
                                             "tunnels were ready")
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(f"tunnels of {self.object_id} not ready in {timeout}s")
            await asyncio.sleep(0.02)  # the fake's control plane is a directory: poll it

    def _code(self) -> int | None:
        record = _control.exit_record(self.object_id)
        if record is not None:
            return record["returncode"]
        if not _control.supervisor_alive(self.object_id):
            return -9  # its worker vanished: the sandbox is gone
        return None

    @property
    def returncode(self) -> int | None:
        return self._code()

    @dual
    async def poll(self) -> int | None:
        self._check()
        return self._code()

    @dual
    async def wait(self, raise_on_termination: bool = True) -> None:
        self._check()
        while (code := self._code()) is None:
            await asyncio.sleep(0.02)
        reason = (_control.exit_record(self.object_id) or {}).get("reason", "terminated")
        if raise_on_termination and reason == "timeout":
            raise SandboxTimeoutError(f"sandbox {self.object_id} timed out")
        if raise_on_termination and reason != "exited":
            raise SandboxTerminatedError(f"sandbox {self.object_id} was {reason} ({code})")

    @dual
    async def terminate(self, *, wait: bool = False) -> int | None:
        self._check()
        _control.terminate(self.object_id)
        if not wait:
            return None
        await self.wait.aio(raise_on_termination=False)
        return self._code()

    @dual
    async def detach(self) -> None:
        self._detached = True

    # --- exec and files -------------------------------------------------------------------

    @dual
    async def exec(self, *args: str, timeout: int | None = None, workdir: str | None = None,
                   env: dict[str, str | None] | None = None,
                   secrets: collections.abc.Collection[Secret] | None = None,
                   text: bool = True, bufsize: int = -1, pty: bool = False) -> ContainerProcess:
        pid = await self._entry_pid()
        extra = {k: v for s in [*(x._env for x in secrets or ()), env or {}]
                 for k, v in s.items() if v is not None}
        argv = ["nsenter", "-t", str(pid), "-n", "-m", "--",
                "env", *(["-C", workdir] if workdir else []),
                *[f"{k}={v}" for k, v in extra.items()], *args]
        if timeout:
            argv = ["timeout", "-s", "KILL", str(timeout), *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return ContainerProcess(proc, text)

    @property
    def filesystem(self) -> SandboxFilesystem:
        return SandboxFilesystem(self)
