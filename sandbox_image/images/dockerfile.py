"""Build a Dockerfile (a subset) into an image of the store: `dockerfile:<context dir>`.

Supported: one `FROM <image>` (first), then `RUN` (shell or JSON form), `COPY <src>... <dest>`
(from the context dir; no flags), `ENV` (`K=V ...` or `K V`), `WORKDIR`, `USER`; comments,
blank lines and `\\` continuations. Anything else (a second FROM, ARG, ADD, COPY --from, ...)
is refused with its line number, before anything runs.

How: the base is taken from the store (pinned for the build) and copied into a build dir;
each RUN runs there in bubblewrap with that copy as a writable root (own pid/ipc/uts
namespaces, no network unless the server allows it, capabilities dropped but for file
ownership, the RUN timeout of the server's exec cap, output capped); COPY and WORKDIR write
into it from the server, never following a link out of it. The result is written as a
one-layer OCI layout and handed to the store like any other local source, so slots use it as
they use any image. A failing RUN stops the build with its exit code and output tail.

Cache: a build's key is the sha256 of the Dockerfile, the base reference and every COPY
source's paths, modes and contents; a finished build is kept under `<store>/builds/<key>`
and reused (also by other servers on the host: a file lock makes one of them build).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_image import seccomp
from sandbox_image.isolation import HOST_ENV, _proc_masks, env_args
from sandbox_image.runner import run_command

from .errors import ImageError
from .locks import flock
from .oci import host_platform

_SECCOMP_FD = 3  # the build sandbox's seccomp filter, opened by posix_spawn

if TYPE_CHECKING:
    from .store import ImageStore

log = logging.getLogger(__name__)

PREFIX = "dockerfile:"
SUPPORTED = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER")
_OUTPUT_CAP = 64 << 10
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class DockerfileError(ImageError):
    """A Dockerfile that cannot be built: the message names the line and why."""


@dataclass(frozen=True)
class Step:
    line: int
    op: str
    args: str


def parse(text: str) -> list[Step]:
    """The instructions of a Dockerfile, checked against the supported subset."""
    steps: list[Step] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full, pending = (pending + line).strip(), ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op not in SUPPORTED:
            raise DockerfileError(f"Dockerfile line {start}: {op} is not supported (supported: "
                                  f"{', '.join(SUPPORTED)})")
        if not args.strip():
            raise DockerfileError(f"Dockerfile line {start}: {op} needs an argument")
        steps.append(Step(start, op, args.strip()))
    if pending:
        raise DockerfileError("Dockerfile ends with a line continuation")
    if not steps or steps[0].op != "FROM":
        raise DockerfileError("Dockerfile must start with FROM")
    for s in steps[1:]:
        if s.op == "FROM":
            raise DockerfileError(f"Dockerfile line {s.line}: a second FROM (multi-stage "
                                  "builds are not supported)")
    if len(steps[0].args.split()) != 1:
        raise DockerfileError(f"Dockerfile line {steps[0].line}: FROM takes one image "
                              "(no AS, no --platform)")
    for s in steps:
        if s.op == "COPY" and s.args.startswith("--"):
            raise DockerfileError(f"Dockerfile line {s.line}: COPY flags ({s.args.split()[0]}) "
                                  "are not supported")
    return steps


def _words(step: Step) -> list[str]:
    if step.args.startswith("["):
        try:
            words = json.loads(step.args)
        except json.JSONDecodeError:
            raise DockerfileError(f"Dockerfile line {step.line}: invalid JSON form") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DockerfileError(f"Dockerfile line {step.line}: the JSON form must be a list "
                                  "of strings")
        return words
    try:
        return shlex.split(step.args)
    except ValueError as e:
        raise DockerfileError(f"Dockerfile line {step.line}: {e}") from None


def _env_pairs(step: Step) -> list[tuple[str, str]]:
    words = _words(step)
    if "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        key, _, value = step.args.partition(" ")
        return [(key, value.strip())]
    pairs = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise DockerfileError(f"Dockerfile line {step.line}: ENV wants KEY=VALUE, got {w!r}")
        pairs.append((key, value))
    return pairs


def _inside(root: Path, path: str) -> Path:
    """`path` (absolute inside the image) under `root`, refusing any link on the way out."""
    target = root
    for part in [p for p in path.split("/") if p and p != "."]:
        if part == "..":
            raise DockerfileError(f"path {path!r} leaves the image")
        target = target / part
        if target.is_symlink():
            raise DockerfileError(f"path {path!r} goes through a symlink in the image")
    return target


def _context_sources(context: Path, step: Step) -> tuple[list[Path], str]:
    words = _words(step)
    if len(words) < 2:
        raise DockerfileError(f"Dockerfile line {step.line}: COPY needs a source and a destination")
    real_ctx = context.resolve()
    sources = []
    for w in words[:-1]:
        src = (context / w).resolve()
        if src != real_ctx and real_ctx not in src.parents:
            raise DockerfileError(f"Dockerfile line {step.line}: COPY source {w!r} is outside "
                                  "the build context")
        if not src.exists():
            raise DockerfileError(f"Dockerfile line {step.line}: COPY source {w!r} does not exist")
        sources.append(src)
    return sources, words[-1]


def build_key(context: Path, text: str, steps: list[Step]) -> str:
    h = hashlib.sha256(text.encode())
    for step in steps:
        if step.op != "COPY":
            continue
        for src in _context_sources(context, step)[0]:
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*"))
            for f in files:
                h.update(f"{f.relative_to(context.resolve())}\0{stat.S_IMODE(f.lstat().st_mode)}\0".encode())
                if f.is_file() and not f.is_symlink():
                    h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:32]


@dataclass
class _State:
    rootfs: Path
    env: dict[str, str]
    workdir: str
    user: str


class DockerfileBuilder:
    """Builds `dockerfile:<dir>` sources into OCI layouts under `root` (see the module doc).
    `store` provides the FROM images; `bwrap` is the bubblewrap executable."""

    def __init__(self, store: ImageStore, root: Path, *, bwrap: str, network: bool,
                 run_timeout: float) -> None:
        self.store = store
        self.root = Path(root)
        self.bwrap = shutil.which(bwrap) or bwrap
        self.network = network
        self.run_timeout = run_timeout
        self._building: dict[str, asyncio.Lock] = {}

    async def build(self, context: Path | str) -> Path:
        """The OCI layout of the image the context's Dockerfile describes (built once)."""
        context = Path(context)
        try:
            text = (context / "Dockerfile").read_text(encoding="utf-8")
        except OSError as e:
            raise DockerfileError(f"cannot read {context}/Dockerfile: {e.strerror or e}") from None
        steps = parse(text)
        key = build_key(context, text, steps)
        final = self.root / "builds" / key
        lock = self._building.setdefault(key, asyncio.Lock())
        async with lock:
            if (final / "index.json").exists():
                return final
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            fd = await flock(self.root / "locks" / f"build-{key}.lock", exclusive=True)
            try:
                if not (final / "index.json").exists():  # another server may have built it
                    await self._build(context, steps, final)
            finally:
                os.close(fd)
        return final

    async def _build(self, context: Path, steps: list[Step], final: Path) -> None:
        base_ref = steps[0].args
        try:
            base = await self.store.get(base_ref, pin=True)
        except ImageError as e:
            raise DockerfileError(f"Dockerfile line {steps[0].line}: cannot get the base image "
                                  f"{base_ref!r}: {e}") from e
        work = self.root / "tmp" / f"build-{final.name}.{secrets.token_hex(4)}"
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir(parents=True)
            await self._run_host(["cp", "-a", "--reflink=auto", "--", f"{base.rootfs}/.",
                                  f"{rootfs}/"], "copying the base image")
            for d in ("proc", "dev", "tmp"):
                (rootfs / d).mkdir(exist_ok=True)
            state = _State(rootfs, {"PATH": _DEFAULT_PATH, **base.env},
                           base.working_dir or "/", base.user or "")
            for step in steps[1:]:
                await self._step(context, step, state)
            layout = work / "layout"
            await asyncio.to_thread(_write_layout, layout, state)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(layout, final)
            log.info("built %s/Dockerfile into %s", context, final)
        finally:
            self.store.unpin(base.digest)
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _step(self, context: Path, step: Step, st: _State) -> None:
        if step.op == "ENV":
            st.env.update(_env_pairs(step))
        elif step.op == "WORKDIR":
            path = step.args if step.args.startswith("/") else f"{st.workdir.rstrip('/')}/{step.args}"
            _inside(st.rootfs, path).mkdir(parents=True, exist_ok=True)
            st.workdir = os.path.normpath(path)
        elif step.op == "USER":
            st.user = step.args
        elif step.op == "COPY":
            sources, dest = _context_sources(context, step)
            if not dest.startswith("/"):
                dest = f"{st.workdir.rstrip('/')}/{dest}"
            await asyncio.to_thread(_copy_in, sources, st.rootfs, dest, len(sources) > 1)
        else:  # RUN
            words = _words(step)
            command = shlex.join(words) if step.args.startswith("[") else step.args
            argv = self._sandbox_argv(st, command)
            # The Dockerfile's ENV applies inside the build sandbox only (--setenv): bwrap
            # runs on the host as root and gets a fixed environment, so an `ENV LD_PRELOAD`
            # never reaches a host process's loader.
            result = await run_command(argv, env=dict(HOST_ENV), cwd=None,
                                       timeout=self.run_timeout, output_cap=_OUTPUT_CAP,
                                       output_kill=_OUTPUT_CAP * 64,
                                       extra_actions=self._seccomp_action())
            if result.exit_code != 0 or result.timed_out:
                tail = (result.stderr.strip() or result.stdout.strip())[-600:]
                what = (f"timed out after {self.run_timeout:g}s" if result.timed_out
                        else f"exit {result.exit_code}")
                raise DockerfileError(f"Dockerfile line {step.line}: RUN {command[:200]!r} "
                                      f"failed ({what}): {tail or 'no output'}")

    def _sandbox_argv(self, st: _State, command: str) -> list[str]:
        _inside(st.rootfs, st.workdir).mkdir(parents=True, exist_ok=True)
        argv = [self.bwrap, "--bind", str(st.rootfs), "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", *([] if self.network else ["--unshare-net"]),
                "--hostname", "build", "--die-with-parent", "--cap-drop", "ALL",
                # root on the host owns every sysctl file: keep /proc/sys read-only.
                "--ro-bind", "/proc/sys", "/proc/sys", *_proc_masks(),
                *(["--seccomp", str(_SECCOMP_FD)] if seccomp.supported() else [])]
        uid = _uid(st.rootfs, st.user)
        if uid:
            argv += ["--unshare-user", "--uid", str(uid[0]), "--gid", str(uid[1])]
        else:  # root: enough to install files and own them, nothing more
            for cap in ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
                argv += ["--cap-add", cap]
        return [*argv, *env_args(st.env), "--chdir", st.workdir,
                "--", "/bin/sh", "-c", command]

    def _seccomp_action(self) -> tuple[tuple, ...]:
        if not seccomp.supported():
            return ()
        path = self.root / "seccomp.bpf"
        if not path.exists():
            seccomp.write_program(str(path))
        return ((os.POSIX_SPAWN_OPEN, _SECCOMP_FD, str(path), os.O_RDONLY, 0),)

    async def _run_host(self, argv: list[str], what: str) -> None:
        exe = shutil.which(argv[0]) or argv[0]
        result = await run_command([exe, *argv[1:]], env={"PATH": _DEFAULT_PATH, "LC_ALL": "C"},
                                   cwd=None, timeout=3600, output_cap=_OUTPUT_CAP,
                                   output_kill=_OUTPUT_CAP * 64)
        if result.exit_code != 0:
            raise DockerfileError(f"{what} failed (exit {result.exit_code}): "
                                  f"{result.stderr.strip()[-300:]}")


def _uid(rootfs: Path, user: str) -> tuple[int, int] | None:
    """(uid, gid) of a non-root USER (a name from the image's /etc/passwd, or numbers)."""
    name, _, group = user.partition(":")
    if not name or name in ("root", "0"):
        return None
    if name.isdigit():
        return int(name), int(group) if group.isdigit() else int(name)
    try:
        for line in (rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == name:
                return int(fields[2]), int(fields[3])
    except (OSError, ValueError):
        pass
    raise DockerfileError(f"USER {user!r}: no such user in the image's /etc/passwd")


def _copy_in(sources: list[Path], rootfs: Path, dest: str, many: bool) -> None:
    target = _inside(rootfs, dest)
    into_dir = many or dest.endswith("/") or target.is_dir()
    for src in sources:
        if src.is_dir():  # a directory's contents, as Docker does
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            out = target / src.name if into_dir else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out, follow_symlinks=False)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_layout(layout: Path, st: _State) -> None:
    """The built root filesystem as a one-layer OCI image layout."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = layout / "layer.tar"
    digest = hashlib.sha256()
    with tmp.open("wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(os.listdir(st.rootfs)):
                tar.add(st.rootfs / entry, arcname=entry, recursive=True)
    with tmp.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    layer_digest = "sha256:" + digest.hexdigest()
    size = tmp.stat().st_size
    os.rename(tmp, blobs / layer_digest.split(":", 1)[1])
    os_name, arch = host_platform()
    config = {"architecture": arch, "os": os_name,
              "config": {"Env": [f"{k}={v}" for k, v in st.env.items()],
                         "WorkingDir": st.workdir, "User": st.user},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": _OCI_MANIFEST,
                "config": {"mediaType": _OCI_CONFIG, "digest": _sha(config_bytes),
                           "size": len(config_bytes)},
                "layers": [{"mediaType": _LAYER_TAR, "digest": layer_digest, "size": size}]}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    for data in (config_bytes, manifest_bytes):
        (blobs / _sha(data).split(":", 1)[1]).write_bytes(data)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": _OCI_MANIFEST,
                                                "digest": _sha(manifest_bytes),
                                                "size": len(manifest_bytes)}]}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(index))
