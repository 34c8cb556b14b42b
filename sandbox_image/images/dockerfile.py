"""Build Dockerfiles as people write them into images of the store: `dockerfile:<context dir>`.

Instructions: FROM (`AS name`, several stages; `scratch`; `--platform`), RUN (shell, JSON
and heredoc forms; `--mount=type=cache|tmpfs` and `--network` accepted), COPY and ADD
(local files, directories, globs, heredocs, `--from=<stage|image>`, `--chown`, `--chmod`;
ADD unpacks local tarballs; .dockerignore honoured), ENV, ARG (defaults, global ARGs in
FROM, values from the builder's `build_args`), WORKDIR, USER, LABEL, EXPOSE, SHELL, CMD,
ENTRYPOINT, and VOLUME/STOPSIGNAL/HEALTHCHECK/MAINTAINER (recorded or ignored: they change
nothing in a slot). Comments, blank lines, `\\` continuations and parser directives.
Anything else (ONBUILD, other RUN --mount types, ADD of a URL, ...) is refused by `parse`
with its line, before anything runs: `load(context)` is what a task loader calls once per
task.

How it builds (see sandbox_image/build_sandbox.py for the sandbox of each step):
- every filesystem step (RUN, COPY, ADD; WORKDIR's mkdir rides on the next one) runs in a
  process of its own, in the build's cgroup (memory, pids), under the build's time limit,
  with the step's writes on a scratch filesystem of the build's disk size; its result is
  one layer (an overlay upper directory);
- each layer is cached under `<store>/builds/layers/<key>`, where the key chains the
  parent's key with the instruction (ARGs expanded) and, for COPY/ADD, the type, mode, link
  target and content of every source file; the first key is the base image's digest.
  Editing step 7 reruns steps 7 and after; two Dockerfiles with the same first steps on the
  same base share those layers;
- the result is an OCI layout under `<store>/builds/images/<key>`: the base as one layer,
  then one layer per step (uncompressed tars in `<store>/builds/blobs`, hard-linked into
  every image that has them), and a config with Env, WorkingDir, User, Cmd, Entrypoint,
  Labels and ExposedPorts. The store unpacks it like any other local image.
A failed build is remembered (per Dockerfile and context content) for the builder's life:
the next slot asking for it gets the same error at once instead of a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import stat
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_image import build_sandbox, seccomp
from sandbox_image.build_cgroup import BuildCgroup
from sandbox_image.isolation import HOST_ENV
from sandbox_image.limits import _own_id, _owner_alive
from sandbox_image.runner import run_command
from sandbox_image.userns import IdRange

from .errors import ImageError
from .locks import flock
from .oci import host_platform

if TYPE_CHECKING:
    from .store import Image, ImageStore

log = logging.getLogger(__name__)

PREFIX = "dockerfile:"
SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE",
             "SHELL", "CMD", "ENTRYPOINT", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "MAINTAINER")
_FS_OPS = ("RUN", "COPY", "ADD")
_OUTPUT_CAP = 64 << 10
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_VAR = re.compile(r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_PROJECT = str(Path(__file__).resolve().parents[2])
_FLAGS = {"COPY": ("from", "chown", "chmod", "link"), "ADD": ("chown", "chmod", "link"),
          "RUN": ("mount", "network"), "FROM": ("platform",)}


class DockerfileError(ImageError):
    """A Dockerfile that cannot be built: the message names the line and why."""

    transient = False  # True: may build next time (the base could not be fetched)


@dataclass(frozen=True)
class Heredoc:
    word: str
    body: str
    expand: bool  # unquoted marker: variables in the body are expanded (COPY)


@dataclass(frozen=True)
class Step:
    line: int
    op: str
    args: str
    flags: tuple[tuple[str, str], ...] = ()
    heredocs: tuple[Heredoc, ...] = ()
    raw: str = ""  # the instruction as written, heredoc bodies included (RUN runs this)

    def flag(self, name: str) -> str | None:
        return dict(self.flags).get(name)


@dataclass
class Stage:
    line: int
    base: str
    name: str | None
    steps: list[Step] = field(default_factory=list)


@dataclass
class Plan:
    args: list[tuple[str, str | None]]  # global ARGs (before the first FROM)
    stages: list[Stage]


def _fail(line: int, message: str) -> DockerfileError:
    return DockerfileError(f"Dockerfile line {line}: {message}")


def parse(text: str) -> list[Step]:
    """The instructions of a Dockerfile (checked: a refused instruction names its line)."""
    steps: list[Step] = []
    lines = text.splitlines()
    escape = "\\"
    n, pending, start = 0, "", 0
    directives = True
    while n < len(lines):
        raw = lines[n]
        n += 1
        line = raw.strip()
        if directives and not pending:
            m = re.match(r"#\s*(\w+)\s*=\s*(\S+)\s*$", line)
            if m and m.group(1).lower() == "escape":
                escape = m.group(2)
                continue
            if m and m.group(1).lower() == "syntax":
                continue
            if line:
                directives = False
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not pending:
            start = n
        if line.endswith(escape) and not _HEREDOC.search(line):
            pending += line[:-1] + " "
            continue
        full, pending = (pending + line).strip(), ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op not in SUPPORTED:
            hint = " (put it in the image another way)" if op == "ONBUILD" else ""
            raise _fail(start, f"{op} is not supported{hint} (supported: {', '.join(SUPPORTED)})")
        args = args.strip()
        heredocs: list[Heredoc] = []
        body_text = ""
        if op in ("RUN", "COPY", "ADD") and not args.startswith("["):
            for m in _HEREDOC.finditer(args):
                strip_tabs, quote, word = m.group(1) == "-", m.group(2), m.group(3)
                body: list[str] = []
                while True:
                    if n >= len(lines):
                        raise _fail(start, f"heredoc <<{word} is never closed")
                    b = lines[n]
                    n += 1
                    if strip_tabs:
                        b = b.lstrip("\t")
                    if b == word:
                        break
                    body.append(b)
                text_body = "".join(f"{b}\n" for b in body)
                heredocs.append(Heredoc(word, text_body, expand=not quote))
                body_text += text_body + word + "\n"
        flags: list[tuple[str, str]] = []
        while args.startswith("--"):
            flag, _, rest = args.partition(" ")
            key, eq, value = flag[2:].partition("=")
            if op not in _FLAGS or key not in _FLAGS[op]:
                raise _fail(start, f"{op} {flag.split('=')[0]} is not supported")
            if key == "mount" and not re.match(r"(type=)?(cache|tmpfs)(,|$)", value):
                # A cache mount only speeds Docker up: here its files land in the layer.
                raise _fail(start, f"RUN --mount={value.split(',')[0]} is not supported "
                            "(only type=cache and type=tmpfs, which builds ignore)")
            if key == "network" and value not in ("default", "none", "host"):
                raise _fail(start, f"RUN --network={value} is not supported")
            flags.append((key, value if eq else "true"))
            args = rest.strip()
        if not args and not heredocs:
            raise _fail(start, f"{op} needs an argument")
        step_raw = args + ("\n" + body_text.rstrip("\n") if body_text else "")
        steps.append(Step(start, op, args, tuple(flags), tuple(heredocs), step_raw))
    if pending:
        raise DockerfileError("Dockerfile ends with a line continuation")
    _check(steps)
    return steps


def _check(steps: list[Step]) -> None:
    first = next((s for s in steps if s.op != "ARG"), None)
    if first is None or first.op != "FROM":
        raise DockerfileError("Dockerfile must start with FROM (ARGs may come before it)")
    names: set[str] = set()
    for s in steps:
        if s.op == "FROM":
            words = s.args.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
                raise _fail(s.line, "FROM takes an image and an optional `AS name`")
            if len(words) == 3:
                names.add(words[2].lower())
        if s.op in ("COPY", "ADD"):
            if s.op == "ADD" and re.match(r"^(https?|git)://|^git@", s.args.split()[0] if s.args else ""):
                raise _fail(s.line, "ADD of a URL is not supported (download it in a RUN step)")
            src = s.flag("from")
            if src is not None and src.isdigit() is False and src.lower() not in names \
                    and ("/" not in src and ":" not in src):
                raise _fail(s.line, f"COPY --from={src}: no earlier stage is named {src!r}")


def plan(text: str) -> Plan:
    steps = parse(text)
    args: list[tuple[str, str | None]] = []
    stages: list[Stage] = []
    for s in steps:
        if s.op == "FROM":
            words = s.args.split()
            stages.append(Stage(s.line, words[0], words[2].lower() if len(words) == 3 else None))
        elif not stages:
            name, eq, default = s.args.partition("=")
            args.append((name.strip(), default if eq else None))
        else:
            stages[-1].steps.append(s)
    return Plan(args, stages)


def load(context: Path | str) -> Plan:
    """Read and check `<context>/Dockerfile` (what a task loader calls once per task)."""
    try:
        text = (Path(context) / "Dockerfile").read_text(encoding="utf-8")
    except OSError as e:
        raise DockerfileError(f"cannot read {context}/Dockerfile: {e.strerror or e}") from None
    return plan(text)


# --- words and variables --------------------------------------------------------------

def expand(text: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}, \\$."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group(1) or m.group(4)
        value = env.get(name)
        if m.group(2) == ":-":
            return value if value else m.group(3)
        if m.group(2) == ":+":
            return m.group(3) if value else ""
        return value or ""
    return _VAR.sub(sub, text)


def _json_form(step: Step) -> list[str] | None:
    if not step.args.startswith("["):
        return None
    try:
        words = json.loads(step.args)
    except json.JSONDecodeError:
        return None  # Docker runs an invalid JSON form as a shell command
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise _fail(step.line, "the JSON form must be a list of strings")
    return words


def _words(step: Step, env: dict[str, str]) -> list[str]:
    words = _json_form(step)
    if words is not None:
        return [expand(w, env) for w in words]
    try:
        return [expand(w, env) for w in shlex.split(step.args)]
    except ValueError as e:
        raise _fail(step.line, str(e)) from None


def _pairs(step: Step, env: dict[str, str]) -> list[tuple[str, str]]:
    words = _words(step, env)
    if step.op == "ENV" and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        key, _, value = step.args.partition(" ")
        return [(key, expand(value.strip(), env))]
    pairs = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise _fail(step.line, f"{step.op} wants KEY=VALUE, got {w!r}")
        pairs.append((key, value))
    return pairs


# --- build state ----------------------------------------------------------------------

@dataclass
class _Config:
    env: dict[str, str]
    workdir: str = "/"
    user: str = ""
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    stop_signal: str = ""
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])

    def copy(self) -> _Config:
        return replace(self, env=dict(self.env), labels=dict(self.labels), ports=list(self.ports),
                       volumes=list(self.volumes), shell=list(self.shell))


@dataclass
class _State:
    """A stage being built: its base, its layers (bottom first), its config, its key."""

    base_rootfs: str
    base_key: str  # the base image's digest, or "scratch"
    layers: list[str]
    config: _Config
    key: str
    args: dict[str, str] = field(default_factory=dict)  # ARGs declared in this stage
    pending_dirs: list[str] = field(default_factory=list)  # WORKDIRs not made yet
    line: int = 0


def _chain(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:40]


def _hash_tree(h: hashlib._Hash, root: str, rel: str,  # type: ignore[name-defined]
               ignore: _Ignore | None = None) -> None:
    """Type, mode, link target and content of `rel` under `root` and everything below it
    (what `ignore` leaves out is not part of it)."""
    if ignore is not None and rel != "." and ignore(os.path.normpath(rel)):
        return
    path = os.path.join(root, rel)
    st = os.lstat(path)
    h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
    if stat.S_ISLNK(st.st_mode):
        h.update(b"->" + os.fsencode(os.readlink(path)) + b"\0")
        # A top-level source that is a link is copied through it (inside the context).
        real = os.path.realpath(path)
        if real.startswith(os.path.realpath(root) + os.sep) and os.path.isfile(real):
            h.update(_file_digest(real))
    elif stat.S_ISREG(st.st_mode):
        h.update(_file_digest(path))
    elif stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(path)):
            _hash_tree(h, root, os.path.join(rel, name), ignore)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: `*` and `?` stay within one path component, `**`
    spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


class _Ignore:
    """The context's .dockerignore: patterns (`*`, `?`, `**`, `!` to take an exclusion
    back), the last matching line wins; an excluded directory takes its contents along."""

    def __init__(self, context: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        try:
            text = (context / ".dockerignore").read_text(encoding="utf-8")
        except OSError:
            return
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            self.rules.append((keep, _glob_regex(pattern)))

    def __call__(self, rel: str) -> bool:
        if not self.rules or rel in ("", ".", "Dockerfile", ".dockerignore"):
            return False
        ignored = False
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for keep, pattern in self.rules:
            if any(pattern.fullmatch(p) for p in prefixes):
                ignored = not keep
        return ignored

    def excluded(self, root: Path, rel: str) -> list[str]:
        """The top-most ignored paths under the directory `rel` of `root`."""
        out: list[str] = []
        if not self.rules:
            return out
        for dirpath, dirnames, filenames in os.walk(root / rel):
            base = os.path.relpath(dirpath, root)
            for name in list(dirnames) + filenames:
                child = name if base == "." else f"{base}/{name}"
                if self(child):
                    out.append(child)
                    if name in dirnames:
                        dirnames.remove(name)
        return out


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _context_sources(context: Path, step: Step, patterns: list[str],
                     ignore: _Ignore | None = None) -> list[str]:
    """Relative paths of the context matched by COPY/ADD source patterns (a glob skips
    what .dockerignore leaves out; a name it leaves out does not exist, as in Docker)."""
    out: list[str] = []
    real = os.path.realpath(context)
    for pattern in patterns:
        rel = os.path.normpath(pattern.lstrip("/")) if pattern not in ("", "/") else "."
        if rel == ".." or rel.startswith("../"):
            raise _fail(step.line, f"{step.op} source {pattern!r} is outside the build context")
        if any(c in rel for c in "*?["):
            parent = os.path.dirname(rel)
            try:
                names = sorted(os.listdir(os.path.join(context, parent)))
            except OSError:
                names = []
            matched = [os.path.join(parent, n) for n in names
                       if fnmatch.fnmatch(n, os.path.basename(rel))
                       and not (ignore and ignore(os.path.join(parent, n)))]
            if not matched:
                raise _fail(step.line, f"{step.op} source {pattern!r} matches nothing in the context")
        else:
            matched = [rel]
            if not os.path.lexists(os.path.join(context, rel)) or (ignore and ignore(rel)):
                raise _fail(step.line, f"{step.op} source {pattern!r} does not exist in the context")
        for m in matched:
            target = os.path.realpath(os.path.join(context, m))
            if target != real and not target.startswith(real + os.sep):
                raise _fail(step.line, f"{step.op} source {m!r} is outside the build context")
        out += matched
    return out


def _is_archive(path: str) -> bool:
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


class DockerfileBuilder:
    """Builds `dockerfile:<dir>` sources into OCI layouts under `root/builds` (see the
    module doc). `store` provides the FROM images. Limits: `run_timeout` (seconds per
    step), `memory_mb` and `pids` (the build's cgroup), `disk_mb`/`inodes` (each step's
    scratch filesystem). `ids`: the user namespace of RUN steps (uid 0 inside is
    `ids.base` outside). `build_args`: ARG values, over the Dockerfile's defaults."""

    def __init__(self, store: ImageStore, root: Path, *, bwrap: str, network: bool,
                 run_timeout: float, memory_mb: int | None = None, pids: int | None = None,
                 disk_mb: int | None = None, inodes: int | None = None,
                 ids: IdRange | None = None, build_args: dict[str, str] | None = None) -> None:
        self.store = store
        self.root = Path(root) / "builds"
        self.bwrap = shutil.which(bwrap) or bwrap
        self.network = network
        self.run_timeout = run_timeout
        self.memory_mb = memory_mb
        self.pids = pids
        self.disk_mb = disk_mb
        self.inodes = inodes
        self.ids = ids or IdRange()
        self.build_args = dict(build_args or {})
        self.stats = {"steps_run": 0, "steps_cached": 0}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, DockerfileError] = {}
        for d in ("layers", "blobs/sha256", "images", "tmp", "locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._seccomp = str(self.root / "seccomp.bpf")
        self._user_helper: str | None = None  # built when a RUN has a non-root USER
        _remove_stale([self.root / "tmp", Path("/tmp")])

    # -- public -----------------------------------------------------------------------

    async def build(self, context: Path | str) -> Path:
        """The OCI layout of the image the context's Dockerfile describes."""
        context = Path(context).resolve()
        text = self._read(context)
        request = _chain(str(context), text, json.dumps(self.build_args, sort_keys=True))
        failed = self._failed.get(request)
        if failed is not None:
            raise failed
        try:
            the_plan = plan(text)
            async with self._lock(f"build-{request}"):
                return await self._build(context, the_plan)
        except DockerfileError as e:
            # A Dockerfile that failed fails the same way until it (or its context) changes:
            # the next slot asking gets the error at once.
            if not e.transient:
                self._failed[request] = e
            raise

    def forget_failures(self) -> None:
        self._failed.clear()

    # -- plan to layers ----------------------------------------------------------------

    def _read(self, context: Path) -> str:
        try:
            return (context / "Dockerfile").read_text(encoding="utf-8")
        except OSError as e:
            raise DockerfileError(f"cannot read {context}/Dockerfile: {e.strerror or e}") from None

    @contextlib.asynccontextmanager
    async def _lock(self, name: str):  # type: ignore[no-untyped-def]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            fd = await flock(self.root / "locks" / f"{name}.lock", exclusive=True)
            try:
                yield
            finally:
                os.close(fd)

    async def _build(self, context: Path, the_plan: Plan) -> Path:
        if os.geteuid() != 0:
            raise DockerfileError("building a Dockerfile needs the slot server to run as root "
                                  "(it maps the build's user namespace)")
        if not os.path.exists(self._seccomp) and seccomp.supported():
            seccomp.write_program(self._seccomp)
        global_args = {k: self.build_args.get(k, v or "") for k, v in the_plan.args}
        try:
            cgroup = BuildCgroup(self.memory_mb << 20 if self.memory_mb else None, self.pids)
        except OSError as e:
            raise DockerfileError(f"cannot limit the build's memory and processes: {e}") from None
        pinned: list[str] = []
        stages: dict[str, _State] = {}
        try:
            state: _State | None = None
            for index, stage in enumerate(the_plan.stages):
                state = await self._start_stage(stage, stages, global_args, pinned)
                for step in stage.steps:
                    await self._step(context, step, state, stages, cgroup, pinned)
                if state.pending_dirs:
                    await self._fs_step(state, ("MKDIR", *state.pending_dirs),
                                        {"mkdirs": state.pending_dirs}, cgroup, state.line, "WORKDIR")
                    state.pending_dirs = []
                stages[str(index)] = state
                if stage.name:
                    stages[stage.name] = state
            assert state is not None
            return await asyncio.to_thread(self._write_image, state)
        finally:
            cgroup.close()
            for digest in pinned:
                with contextlib.suppress(ImageError):
                    self.store.unpin(digest)

    async def _start_stage(self, stage: Stage, stages: dict[str, _State],
                           global_args: dict[str, str], pinned: list[str]) -> _State:
        ref = expand(stage.base, global_args)
        if ref.lower() in stages:
            parent = stages[ref.lower()]
            return replace(parent, layers=list(parent.layers), config=parent.config.copy(),
                           args={}, pending_dirs=list(parent.pending_dirs), line=stage.line)
        if ref == "scratch":
            empty = self.root / "scratch"
            empty.mkdir(exist_ok=True)
            return _State(str(empty), "scratch", [], _Config({"PATH": _DEFAULT_PATH}),
                          _chain("base", "scratch", str(self.ids.base)), line=stage.line)
        image = await self._base(ref, stage.line, pinned)
        cfg = image.config
        config = _Config({"PATH": _DEFAULT_PATH, **image.env}, cfg.working_dir or "/", cfg.user,
                         cfg.cmd, cfg.entrypoint, dict(cfg.labels))
        return _State(str(image.rootfs), image.digest, [], config,
                      _chain("base", image.digest, str(self.ids.base)), line=stage.line)

    async def _base(self, ref: str, line: int, pinned: list[str]) -> Image:
        try:
            image = await self.store.get(ref, pin=True)
        except ImageError as e:
            err = _fail(line, f"cannot get the base image {ref!r}: {e}")
            err.transient = True  # a registry or mirror may answer next time
            raise err from e
        pinned.append(image.digest)
        return image

    async def _step(self, context: Path, step: Step, st: _State, stages: dict[str, _State],
                    cgroup: BuildCgroup, pinned: list[str]) -> None:
        c = st.config
        scope = {**st.args, **c.env}  # ENV wins over ARG, as in Docker
        op = step.op
        if op == "ARG":
            for word in step.args.split():
                name, eq, default = word.partition("=")
                value = self.build_args.get(name, expand(default, scope) if eq else None)
                st.args[name] = value if value is not None else st.args.get(name, "")
            st.key = _chain(st.key, "ARG", json.dumps(st.args, sort_keys=True))
            return
        if op == "ENV":
            c.env.update(_pairs(step, scope))
        elif op == "LABEL":
            c.labels.update(_pairs(step, scope))
        elif op == "WORKDIR":
            path = expand(step.args, scope)
            path = path if path.startswith("/") else f"{c.workdir.rstrip('/')}/{path}"
            c.workdir = os.path.normpath(path)
            st.pending_dirs.append(c.workdir)
        elif op == "USER":
            c.user = expand(step.args, scope)
        elif op == "EXPOSE":
            for port in _words(step, scope):
                c.ports.append(port if "/" in port else f"{port}/tcp")
        elif op == "VOLUME":
            c.volumes += _json_form(step) or step.args.split()
        elif op == "STOPSIGNAL":
            c.stop_signal = expand(step.args, scope)
        elif op in ("HEALTHCHECK", "MAINTAINER"):
            return  # no effect in a slot
        elif op == "SHELL":
            words = _json_form(step)
            if not words:
                raise _fail(step.line, "SHELL wants the JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]")
            c.shell = words
        elif op in ("CMD", "ENTRYPOINT"):
            words = _json_form(step)
            command = words if words is not None else [*c.shell, step.args]
            if op == "CMD":
                c.cmd = command
            else:
                c.entrypoint = command
                c.cmd = None  # Docker: ENTRYPOINT resets an inherited CMD
        elif op == "RUN":
            await self._run(step, st, scope, cgroup)
            return
        else:
            await self._copy(context, step, st, stages, scope, cgroup, pinned)
            return
        st.key = _chain(st.key, op, step.args)

    async def _run(self, step: Step, st: _State, scope: dict[str, str], cgroup: BuildCgroup) -> None:
        c = st.config
        words = _json_form(step)
        if words is not None:
            argv = words
        elif step.heredocs and _HEREDOC.fullmatch(step.args.strip()):
            argv = [*c.shell, step.heredocs[0].body]  # `RUN <<EOF`: the body is the script
        else:
            argv = [*c.shell, step.raw]
        env = {**{k: v for k, v in st.args.items()}, **c.env}
        if c.user and c.user.partition(":")[0] not in ("", "0", "root") and self._user_helper is None:
            self._user_helper = await asyncio.to_thread(build_sandbox.user_helper) or ""
        network = self.network and step.flag("network") != "none"
        run = {"argv": argv, "env": env, "cwd": c.workdir, "user": c.user or "0",
               "user_helper": self._user_helper or None,
               "network": network, "bwrap": self.bwrap, "seccomp": self._seccomp,
               "setpriv": shutil.which("setpriv", path=HOST_ENV["PATH"]) or "setpriv",
               "slirp": shutil.which("slirp4netns", path=HOST_ENV["PATH"]) or "slirp4netns"}
        if network and not shutil.which("slirp4netns", path=HOST_ENV["PATH"]):
            raise _fail(step.line, "the build's network needs slirp4netns (apt-get install "
                        "slirp4netns), or build_network off")
        dirs, st.pending_dirs = st.pending_dirs, []
        ident = ("RUN", json.dumps(argv), json.dumps(env, sort_keys=True), c.workdir, c.user, *dirs)
        await self._fs_step(st, ident, {"run": run, "mkdirs": dirs}, cgroup, step.line,
                            f"RUN {step.args[:200]!r}")

    async def _copy(self, context: Path, step: Step, st: _State, stages: dict[str, _State],
                    scope: dict[str, str], cgroup: BuildCgroup, pinned: list[str]) -> None:
        c = st.config
        words = _words(step, scope) if not (step.heredocs and not step.args.split()) else []
        h = hashlib.sha256()
        items: list[dict[str, object]] = []
        chown = step.flag("chown")
        chmod = step.flag("chmod")
        if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
            raise _fail(step.line, f"{step.op} --chmod={chmod}: only octal modes are supported")
        dest = words[-1] if words else ""
        if not dest:
            raise _fail(step.line, f"{step.op} needs a destination")
        if not dest.startswith("/"):
            dest = f"{c.workdir.rstrip('/')}/{dest}"
        sources = [w for w in words[:-1] if not _HEREDOC.fullmatch(w)]
        many = len(sources) + len(step.heredocs) > 1
        into_dir = many or dest.endswith("/")
        if many and not dest.endswith("/"):
            raise _fail(step.line, f"{step.op} with several sources needs a destination ending in /")
        for doc in step.heredocs:
            data = expand(doc.body, scope) if doc.expand else doc.body
            target = f"{dest.rstrip('/')}/{doc.word}" if into_dir else dest
            items.append({"kind": "data", "dest": target, "data": data, "mode": 0o644, "chown": chown,
                          "chmod": chmod})
            h.update(f"heredoc\0{target}\0{data}\0".encode())
        source = step.flag("from")
        if source is not None:
            from_state = stages.get(source.lower())
            if from_state is not None:
                stage_ref = {"base": from_state.base_rootfs, "layers": from_state.layers,
                             "key": from_state.key}
                h.update(f"from\0{from_state.key}\0".encode())
            else:
                image = await self._base(expand(source, scope), step.line, pinned)
                stage_ref = {"base": str(image.rootfs), "layers": [], "key": image.digest}
                h.update(f"from\0{image.digest}\0".encode())
            for src in sources:
                items.append({"kind": "copy", "stage": stage_ref, "src": src, "dest": dest,
                              "into_dir": into_dir, "chown": chown, "chmod": chmod})
        else:
            ignore = _Ignore(context)
            for rel in await asyncio.to_thread(_context_sources, context, step, sources, ignore):
                full = str(context / rel)
                await asyncio.to_thread(_hash_tree, h, str(context), rel, ignore)
                if step.op == "ADD" and await asyncio.to_thread(_is_archive, full):
                    items.append({"kind": "tar", "archive": full, "dest": dest, "chown": chown,
                                  "chmod": chmod})
                else:
                    items.append({"kind": "copy", "src_root": str(context), "src": rel,
                                  "dest": dest, "into_dir": into_dir and not os.path.isdir(full),
                                  "chown": chown, "chmod": chmod,
                                  "exclude": await asyncio.to_thread(ignore.excluded, context, rel)
                                  if os.path.isdir(full) else []})
        dirs, st.pending_dirs = st.pending_dirs, []
        ident = (step.op, json.dumps(step.flags), step.args, dest, h.hexdigest(), *dirs)
        await self._fs_step(st, ident, {"items": items, "mkdirs": dirs}, cgroup, step.line,
                            f"{step.op} {step.args[:200]!r}")

    async def _fs_step(self, st: _State, ident: tuple[str, ...], spec: dict[str, object],
                       cgroup: BuildCgroup, line: int, what: str) -> None:
        key = _chain(st.key, *ident)
        layer = self.root / "layers" / key
        if not (layer / "diff").is_dir():
            async with self._lock(f"layer-{key}"):
                if not (layer / "diff").is_dir():
                    await self._execute(st, key, spec, cgroup, line, what)
                    self.stats["steps_run"] += 1
        else:
            self.stats["steps_cached"] += 1
        with contextlib.suppress(OSError):
            os.utime(layer)  # last use, for trimming the cache
        st.layers.append(key)
        st.key = key

    async def _execute(self, st: _State, key: str, spec: dict[str, object], cgroup: BuildCgroup,
                       line: int, what: str) -> None:
        tmp = self.root / "tmp" / _tmp_name(key)
        tmp.mkdir(mode=0o700)
        # Where the step mounts its root: reachable by the unprivileged uid bubblewrap runs
        # as; removed here whatever happened to the step.
        mount_dir = await asyncio.to_thread(tempfile.mkdtemp, prefix=f"image-build.{_OWNER}.",
                                            dir="/tmp")
        os.chmod(mount_dir, 0o711)
        try:
            full = {**spec, "uid_base": self.ids.base, "base": st.base_rootfs,
                    "layers_root": str(self.root / "layers"), "layers": st.layers,
                    "out": str(tmp / "diff"), "result": str(tmp / "result.json"),
                    "scratch_image": str(tmp / "scratch.img"), "mount_dir": mount_dir,
                    "disk_bytes": self.disk_mb << 20 if self.disk_mb else None,
                    "inodes": self.inodes}
            (tmp / "spec.json").write_text(json.dumps(full))
            before = cgroup.events()
            failcnt = cgroup.memory_failures()
            # -S: the step needs the standard library and this package only (skipping
            # site-packages saves a third of its start-up).
            argv = [*cgroup.wrapper(), sys.executable, "-S", "-m", "sandbox_image.build_sandbox",
                    str(tmp / "spec.json")]
            # A fixed environment: nothing of the Dockerfile (ENV LD_PRELOAD=...) reaches a
            # host process; the Dockerfile's ENV goes to bubblewrap's --setenv inside only.
            result = await run_command(argv, env={**HOST_ENV, "PYTHONPATH": _PROJECT}, cwd=None,
                                       timeout=self.run_timeout, output_cap=_OUTPUT_CAP,
                                       output_kill=_OUTPUT_CAP * 64)
            try:
                outcome = json.loads((tmp / "result.json").read_text())
            except (OSError, ValueError):
                outcome = {}
            oom, forks = (a - b for a, b in zip(cgroup.events(), before))
            # Both streams: apt and pip say why on stdout as often as on stderr.
            tail = "\n".join(t for t in (result.stdout.strip()[-400:],
                                          result.stderr.strip()[-600:]) if t)
            code = outcome.get("exit", result.exit_code)
            if result.timed_out:
                reason = f"timed out after {self.run_timeout:g}s (the build's time limit)"
            elif "error" in outcome:
                log.debug("build step %s: %s", key[:12], tail)
                raise _fail(line, f"{what} failed: {outcome['error']}")
            elif code == 0 and result.exit_code == 0:
                self._publish(tmp, key)
                log.info("built step %s (%s)", key[:12], what[:80])
                return
            elif oom or (cgroup.memory_failures() > failcnt and code in (137, -9)):
                reason = f"exit {code}: the build's memory limit ({self.memory_mb} MiB) was reached"
            elif forks:
                reason = f"exit {code}: the build's process limit ({self.pids}) was reached"
            elif outcome.get("disk_full"):
                reason = f"exit {code}: the build's disk limit ({self.disk_mb} MiB) was reached"
            else:
                reason = f"exit {code}"
            raise _fail(line, f"{what} failed ({reason}): {tail or 'no output'}")
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            await asyncio.to_thread(shutil.rmtree, mount_dir, True)

    def _publish(self, tmp: Path, key: str) -> None:
        staging = tmp / "layer"
        staging.mkdir()
        os.rename(tmp / "diff", staging / "diff")
        os.rename(staging, self.root / "layers" / key)

    # -- the image ---------------------------------------------------------------------

    def _blob_of_base(self, st: _State) -> tuple[str, int]:
        marker = self.root / "layers" / f"base-{st.base_key.replace(':', '-')}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            doc = json.loads(marker.read_text())
            if (self.root / "blobs" / "sha256" / doc["digest"].split(":")[1]).exists():
                return doc["digest"], doc["size"]
        digest, size = self._tar(Path(st.base_rootfs), shift=0)
        marker.write_text(json.dumps({"digest": digest, "size": size}))
        return digest, size

    def _blob_of_layer(self, key: str) -> tuple[str, int]:
        marker = self.root / "layers" / key / "layer.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            doc = json.loads(marker.read_text())
            if (self.root / "blobs" / "sha256" / doc["digest"].split(":")[1]).exists():
                return doc["digest"], doc["size"]
        digest, size = self._tar(self.root / "layers" / key / "diff", shift=self.ids.base)
        tmp = marker.with_name(f".layer.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"digest": digest, "size": size}))
        os.replace(tmp, marker)
        return digest, size

    def _tar(self, root: Path, shift: int) -> tuple[str, int]:
        """An uncompressed layer tar of `root` into the blob store: owners shifted back by
        `shift` (host uid of the image's root), overlay whiteouts and opaque directories as
        OCI whiteouts. Returns (digest, size)."""
        tmp = self.root / "tmp" / _tmp_name("blob")
        h = hashlib.sha256()
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw, h)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
                _add_tree(tar, str(root), "", shift)
        digest = "sha256:" + h.hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, self.root / "blobs" / "sha256" / h.hexdigest())
        return digest, size

    def _write_image(self, st: _State) -> Path:
        layers = [self._blob_of_base(st)] + [self._blob_of_layer(k) for k in st.layers]
        c = st.config
        os_name, arch = host_platform()
        run_config: dict[str, object] = {"Env": [f"{k}={v}" for k, v in c.env.items()],
                                         "WorkingDir": c.workdir, "User": c.user}
        if c.cmd is not None:
            run_config["Cmd"] = c.cmd
        if c.entrypoint is not None:
            run_config["Entrypoint"] = c.entrypoint
        if c.labels:
            run_config["Labels"] = c.labels
        if c.ports:
            run_config["ExposedPorts"] = {p: {} for p in c.ports}
        if c.volumes:
            run_config["Volumes"] = {v: {} for v in c.volumes}
        if c.stop_signal:
            run_config["StopSignal"] = c.stop_signal
        config = {"architecture": arch, "os": os_name, "config": run_config,
                  "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]}}
        config_bytes = json.dumps(config, sort_keys=True).encode()
        manifest = {"schemaVersion": 2, "mediaType": _OCI_MANIFEST,
                    "config": {"mediaType": _OCI_CONFIG, "digest": _sha(config_bytes),
                               "size": len(config_bytes)},
                    "layers": [{"mediaType": _LAYER_TAR, "digest": d, "size": s} for d, s in layers]}
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        final = self.root / "images" / _sha(manifest_bytes).split(":")[1][:40]
        if (final / "index.json").exists():
            return final
        work = self.root / "tmp" / _tmp_name("image")
        blobs = work / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for d, _ in layers:  # hard links: a layer shared by images is on disk once
            os.link(self.root / "blobs" / "sha256" / d.split(":")[1], blobs / d.split(":")[1])
        for data in (config_bytes, manifest_bytes):
            (blobs / _sha(data).split(":")[1]).write_bytes(data)
        index = {"schemaVersion": 2, "manifests": [{"mediaType": _OCI_MANIFEST,
                                                    "digest": _sha(manifest_bytes),
                                                    "size": len(manifest_bytes)}]}
        (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (work / "index.json").write_text(json.dumps(index))
        try:
            os.rename(work, final)
        except OSError:  # built meanwhile by another server: theirs is the same
            shutil.rmtree(work, ignore_errors=True)
        return final


_OWNER = _own_id()  # pid-starttime-pidns: whose temporary files these are


def _tmp_name(kind: str) -> str:
    return f"{kind}.{_OWNER}.{secrets.token_hex(4)}"


def _remove_stale(dirs: list[Path]) -> None:
    """What a killed server's builds left (a step's scratch image, mount dirs): entries
    named for an owner that is no longer running. Other servers' live entries stay."""
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if d == Path("/tmp") and not name.startswith("image-build."):
                continue
            parts = name.split(".")
            owner = parts[1] if len(parts) >= 3 else ""
            if owner and not _owner_alive(owner):
                log.info("removing %s, left by a build of a server that is gone", d / name)
                path = d / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


class _HashingWriter:
    def __init__(self, raw, h) -> None:  # type: ignore[no-untyped-def]
        self.raw, self.h = raw, h

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.raw.tell()


def _add_tree(tar: tarfile.TarFile, root: str, rel: str, shift: int) -> None:
    path = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(path)):
        child_rel = f"{rel}/{name}" if rel else name
        full = os.path.join(path, name)
        st = os.lstat(full)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # an overlay whiteout
            info = tarfile.TarInfo(f"{rel}/.wh.{name}" if rel else f".wh.{name}")
            info.mtime = int(st.st_mtime)
            tar.addfile(info)
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue  # devices, FIFOs, sockets: the store would skip them anyway
        info = tar.gettarinfo(full, arcname=child_rel)
        for attr in ("uid", "gid"):
            value = getattr(info, attr) - shift
            setattr(info, attr, value if 0 <= value < 65536 else 0)
        info.uname = info.gname = ""
        if info.isreg():
            with open(full, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        if stat.S_ISDIR(st.st_mode):
            opaque = b""
            with contextlib.suppress(OSError):
                opaque = os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False)
            if opaque == b"y":
                marker = tarfile.TarInfo(f"{child_rel}/.wh..wh..opq")
                marker.mtime = int(st.st_mtime)
                tar.addfile(marker)
            _add_tree(tar, root, child_rel, shift)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
