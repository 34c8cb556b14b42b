"""What each slot runs in: its image (an unpacked root filesystem, or the host view), the
bubblewrap argv builder for it, its workspace path inside, its environment.

A label (a task's image name) is looked up in `SlotLimits.images`; a label not listed is a
source itself. Images come from the host's `ImageStore` (shared by every server on the host,
unpacked once by digest) and stay pinned while a slot uses them. One `Bubblewrap` per image
(and interpreter) is built and shared by all its slots.

The writable part: an image's `workdir` (SWE-smith keeps the repo at /testbed) is the slot's
workspace. Its initial content comes from the image, per slot and private: an overlay
(lower: the image's directory, read-only and shared; upper: the slot's disk) or a copy made
at reset, see `populate`. A reset restores it (a fresh disk, a fresh overlay or copy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_image import mounts
from sandbox_image.config import HOST_IMAGE, ImageSpec, ServerConfig
from sandbox_image.images import Image, ImageError, ImageStore
from sandbox_image.images.dockerfile import PREFIX as DOCKERFILE
from sandbox_image.images.dockerfile import DockerfileBuilder
from sandbox_image.isolation import DEFAULT_PATH, Bubblewrap
from sandbox_image.spawn import spawn, watch_exit
from sandbox_image.userns import IdRange

log = logging.getLogger(__name__)

# Interpreters tried when a spec names none: SWE-smith images keep the repo's environment
# in a conda env called `testbed`.
PYTHON_CANDIDATES = ("/opt/miniconda3/envs/testbed/bin/python", "/opt/conda/envs/testbed/bin/python")
DEFAULT_WORKDIR = "/testbed"
_NEEDED_DIRS = ("proc", "dev", "tmp")  # mount points bwrap needs in an image root


class SlotImageError(Exception):
    """An image a slot cannot run in (the message says why); status is the HTTP status."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SlotImage:
    label: str
    spec: ImageSpec
    image: Image | None  # None: the host view
    bwrap: Bubblewrap | None  # None: isolation is off (host view only)
    workdir: str  # the workspace path inside the sandbox ("" without isolation)
    lower: str | None  # host path of the image's content at workdir, if any
    env: dict[str, str] = field(default_factory=dict)  # over the server's default env
    service: tuple[str, ...] = ()  # the image's command, started when a slot starts

    @property
    def digest(self) -> str | None:
        return self.image.digest if self.image else None

    def describe(self) -> dict[str, object]:
        return {"label": self.label, "source": self.spec.source, "digest": self.digest,
                "workdir": self.workdir or None}


def _real_dir_in(root: Path, path: str) -> Path | None:
    """`root/path` if every component is a real directory (no symlink on the way: an image's
    symlink must never point the server at a host path), else None."""
    cur = root
    for part in [p for p in path.split("/") if p]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return cur


def _image_file(root: Path, path: str) -> bool:
    """Whether `path` names an executable inside the image (symlinks resolved inside it)."""
    cur, depth = path, 0
    while depth < 16:
        parent = _real_dir_in(root, os.path.dirname(cur))
        if parent is None:
            return False
        full = parent / os.path.basename(cur)
        try:
            st = os.lstat(full)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            cur = os.path.normpath(target if target.startswith("/")
                                   else os.path.join(os.path.dirname(cur), target))
            depth += 1
            continue
        return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)
    return False


class SlotImages:
    """Loads labels into `SlotImage`s for the slots of one server."""

    def __init__(self, cfg: ServerConfig, *, isolation: str, host_bwrap: Bubblewrap | None,
                 host_workspace: str, hide: list[str], tmp_size: int | None) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.isolation = isolation
        self.host_workspace = host_workspace
        self._hide = hide
        self._tmp_size = tmp_size
        self._bwraps: dict[tuple[str, str | None], Bubblewrap] = {}
        self._view = host_bwrap.view if host_bwrap is not None else None
        if host_bwrap is not None:
            self._bwraps[("host", cfg.host_python)] = host_bwrap
        self._store: ImageStore | None = None
        self._builder: DockerfileBuilder | None = None

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            root = self.cfg.image_store or (self.cfg.data_dir / "images")
            self._store = ImageStore(root, self.limits.image_cache_mb << 20,
                                     sources=self.limits.image_sources)
        return self._store

    @property
    def builder(self) -> DockerfileBuilder:
        if self._builder is None:
            # A build runs under the slots' limits (memory, pids, disk, time), in a user
            # namespace of the slots' id range, with its own network setting.
            self._builder = DockerfileBuilder(
                self.store, self.store.root, bwrap=self.cfg.bwrap_path,
                network=self.limits.build_network, run_timeout=self.limits.exec_timeout_cap,
                memory_mb=self.limits.memory_mb, pids=self.limits.pids,
                disk_mb=self.limits.disk_mb, inodes=self.limits.inodes,
                ids=IdRange(self.cfg.uid_base), build_args=self.limits.build_args)
        return self._builder

    async def load(self, label: str) -> SlotImage:
        """The image of `label`, pinned for the caller (release it with `release`)."""
        spec = self.limits.image_spec(label)
        if spec.source == HOST_IMAGE:
            return self.host(label)
        if self.isolation != "bwrap":
            raise SlotImageError(f"image {label!r} needs bubblewrap, and this server runs "
                                 "without isolation: only the host view is possible", 409)
        try:
            source = spec.source
            if source.startswith(DOCKERFILE):  # built once per content, then a local layout
                source = f"oci:{await self.builder.build(source[len(DOCKERFILE):])}"
            image = await self.store.get(source, pin=True)
        except ImageError as e:
            raise SlotImageError(f"cannot get image {label!r} ({spec.source}): {e}") from e
        try:
            return self._from_image(label, spec, image)
        except BaseException:
            self.store.unpin(image.digest)
            raise

    def describe(self) -> dict[str, object] | None:
        if self._store is None:
            return None
        stats = self._store.stats
        return {"unpacks": stats.unpacks, "hits": stats.hits}

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()

    def release(self, slot_image: SlotImage) -> None:
        if slot_image.image is not None and self._store is not None:
            with contextlib.suppress(ImageError):
                self._store.unpin(slot_image.image.digest)

    def is_host(self, label: str) -> bool:
        return self.limits.image_spec(label).source == HOST_IMAGE

    def host(self, label: str) -> SlotImage:
        """A host-view label's slot image (nothing to load or pin)."""
        spec = self.limits.image_spec(label)
        python = spec.python or self.cfg.host_python
        env = dict(spec.env)
        if python:
            found = shutil.which(python) or python  # a bare name is looked up on PATH
            env["PATH"] = f"{os.path.dirname(os.path.abspath(found))}:{self._default_path()}"
        bwrap = None
        if self.isolation == "bwrap":
            key = ("host", python)
            bwrap = self._bwraps.get(key)
            if bwrap is None:
                bwrap = self._bwraps[key] = self._bubblewrap(None, [python] if python else [])
        return SlotImage(label, spec, None, bwrap, self.host_workspace, None, env)

    def _default_path(self) -> str:
        return self.limits.env.get("PATH", DEFAULT_PATH)

    def _bubblewrap(self, root: str | None, python: list[str]) -> Bubblewrap:
        expose = [] if root else [*python, *self.limits.expose]
        return Bubblewrap(self.cfg.bwrap_path, network=self.limits.network, hide=self._hide,
                          expose=expose, tmp_size=self._tmp_size, root=root,
                          view=None if root else self._view)

    def _from_image(self, label: str, spec: ImageSpec, image: Image) -> SlotImage:
        root = image.rootfs
        missing = [d for d in _NEEDED_DIRS if _real_dir_in(root, d) is None]
        if missing:
            raise SlotImageError(f"image {label!r} has no /{', /'.join(missing)} directory: "
                                 "bubblewrap needs them as mount points")
        workdir, lower = self._workdir(label, spec, image)
        env = {**image.env, **spec.env}
        python = spec.python or next((p for p in PYTHON_CANDIDATES if _image_file(root, p)), None)
        if python:
            if not _image_file(root, python):
                raise SlotImageError(f"image {label!r} has no executable {python}")
            path = env.get("PATH") or self._default_path()
            env["PATH"] = f"{os.path.dirname(python)}:{path}"
        key = (image.digest, None)
        bwrap = self._bwraps.get(key)
        if bwrap is None:
            bwrap = self._bwraps[key] = self._bubblewrap(str(root), [])
        start = spec.service if spec.service is not None else spec.source.startswith(DOCKERFILE)
        service = tuple(image.command) if start else ()
        return SlotImage(label, spec, image, bwrap, workdir, lower, env, service)

    def _workdir(self, label: str, spec: ImageSpec, image: Image) -> tuple[str, str | None]:
        root = image.rootfs
        if spec.workdir is not None:
            found = _real_dir_in(root, spec.workdir)
            if found is None:
                raise SlotImageError(f"image {label!r} has no directory {spec.workdir} (the "
                                     "workdir must be a real directory of the image, no "
                                     "symlink on the way)")
            return spec.workdir, _lower(found)
        working = (image.working_dir or "").rstrip("/")
        for candidate in (DEFAULT_WORKDIR, working, self.cfg.workspace):
            if candidate and ".." not in candidate.split("/"):
                found = _real_dir_in(root, candidate)
                if found is not None:
                    return candidate, _lower(found)
        # No directory to mount on in a read-only root: the private /tmp always has room.
        return "/tmp/workspace", None


def _lower(path: Path) -> str | None:
    """The image's content at the workdir, or None when it is empty."""
    try:
        return str(path) if any(os.scandir(path)) else None
    except OSError:
        return None


# --- the writable copy ------------------------------------------------------------------

def mount_overlay(lower: str, disk_root: str, target: str) -> None:
    """An overlay on `target` (the slot's workspace dir): the image's `lower`, read-only and
    shared, under an upper dir on the slot's own disk (writes count against its limit)."""
    upper, work = os.path.join(disk_root, "upper"), os.path.join(disk_root, "work")
    for d in (upper, work):
        os.makedirs(d, exist_ok=True)
    os.chmod(upper, os.stat(lower).st_mode & 0o7777)
    mounts.mount("overlay", target, "overlay", mounts.MS_NOSUID | mounts.MS_NODEV,
                 f"lowerdir={lower},upperdir={upper},workdir={work}")


async def copy_tree(lower: str, target: str, owner: int | None = None) -> None:
    """Copy the image's content into the slot's workspace (reflinks where the fs can), then
    give it to `owner` (root of a slot container) if set. Started through `spawn` so the
    server's orphan reaper leaves the child to us."""
    cp = shutil.which("cp") or "/bin/cp"
    steps = [[cp, "-a", "--reflink=auto", "--", f"{lower}/.", f"{target}/"]]
    if owner is not None:
        steps.append([shutil.which("chown") or "/bin/chown", "-R", "-h", f"{owner}:{owner}",
                      "--", target])
    code, text = 0, ""
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err:
        for argv in steps:
            pid = spawn(argv, env={"PATH": DEFAULT_PATH, "LC_ALL": "C"}, cwd=None,
                        stdout=null.fileno(), stderr=err.fileno(), new_session=False,
                        preexec=None)
            code = await watch_exit(pid)
            if code != 0:
                break
        err.seek(0)
        text = err.read()[-4000:].decode(errors="replace").strip()
    if code != 0:
        status = 507 if "No space left" in text or "quota" in text.lower() else 500
        raise SlotImageError(f"cannot copy the image's workdir into the slot (exit {code}): "
                             f"{text[-300:] or 'no output'}", status)
