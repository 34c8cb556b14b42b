"""One filesystem step of an image build (RUN, or COPY/ADD/WORKDIR's writes), in a process
of its own: `python -m sandbox_image.build_sandbox SPEC.json` (started by the Dockerfile
builder, already in the build's memory/pids cgroup, under its time limit).

The step's process has a private mount namespace, so every mount below ends with it:
- the step's scratch filesystem: a loop-mounted ext4 of the build's disk size (a RUN that
  writes more gets ENOSPC; the host's disk is never filled), holding the overlay's upper
  layer, which is the step's layer;
- the image root: an overlay of the parent layers (each a finished step's upper layer)
  over the base image's root, shown through an idmapped mount so its files belong to root
  of the build's user namespace;
- RUN: bubblewrap as an unprivileged host uid, in a user namespace that maps 0..65535
  inside to `uid_base`.. outside (so apt's setgroups to 65534 works, and root inside is no
  one on the host), with its own pid/ipc/uts/net namespaces, the slots' capability set and
  seccomp filter, masked /proc files and a read-only /proc/sys, and an environment made
  of the Dockerfile's ENV/ARG alone;
- COPY/ADD: the writes are done here, each path resolved inside the image root
  (`sandbox_image.inroot`: openat2 RESOLVE_IN_ROOT), owned by the image's root.
When the step succeeds its upper layer is copied to `out`. The outcome is written as JSON
to `result` ({"exit": n, "disk_full": bool} or {"error": "..."}).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
from typing import Any

from sandbox_image import mounts
from sandbox_image.container import hardening_args
from sandbox_image.inroot import Writer, open_in
from sandbox_image.isolation import HOST_ENV
from sandbox_image.userns import IdRange, MappingNamespace, idmapped_clone, write_maps

_OVERLAY_OPTS = "redirect_dir=off,index=off,metacopy=off"
_MOUNT_POINTS = ("proc", "dev", "tmp")


class StepError(Exception):
    pass


def _read_in(root_fd: int, path: str) -> str:
    try:
        fd = open_in(root_fd, path, os.O_RDONLY)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 20).decode(errors="replace")


def resolve_user(root: str, user: str) -> tuple[int, int]:
    """(uid, gid) inside the image of `user` (`name`, `uid`, `name:group`, `uid:gid`)."""
    name, _, group = (user or "0").partition(":")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        passwd, groups = _read_in(fd, "/etc/passwd"), _read_in(fd, "/etc/group")
    finally:
        os.close(fd)

    def lookup(table: str, key: str, what: str) -> tuple[int, int]:
        if key.isdigit():
            return int(key), int(key)
        for line in table.splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == key:
                return int(fields[2]), int(fields[3]) if what == "user" else int(fields[2])
        raise StepError(f"{what} {key!r} is not in the image's /etc/{'passwd' if what == 'user' else 'group'}")

    uid, gid = lookup(passwd, name or "0", "user")
    if group:
        gid = lookup(groups, group, "group")[0]
    return uid, gid


def _mount_scratch(spec: dict[str, Any], at: str) -> str | None:
    """The step's scratch filesystem at `at`; returns the backing file (None: a plain dir)."""
    size = spec.get("disk_bytes")
    if not size:
        return None
    image = spec["scratch_image"]
    with open(image, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E",
            "lazy_itable_init=1,nodiscard,root_owner=0:0"]
    if spec.get("inodes"):
        argv[3:3] = ["-N", str(spec["inodes"])]
    proc = subprocess.run([*argv, image], capture_output=True, env=dict(HOST_ENV), timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise StepError(f"mkfs.ext4 failed: {proc.stderr.decode(errors='replace').strip()}")
    fd, dev = mounts.attach_loop(image)
    try:
        mounts.mount(dev, at, "ext4", mounts.MS_NOSUID, "noinit_itable")
    finally:
        os.close(fd)
    return image


def _overlay(layers_root: str, layers: list[str], base: str, target: str,
             upper: tuple[str, str] | None) -> None:
    """An overlay of `layers` (bottom first, names under `layers_root`) over `base`."""
    # Relative lower paths (from the layers dir) keep the option string short: the kernel
    # takes one page of mount options.
    os.chdir(layers_root)
    lowers = ":".join([*(f"{name}/diff" for name in reversed(layers)), base])
    opts = f"lowerdir={lowers}"
    if upper is not None:
        opts += f",upperdir={upper[0]},workdir={upper[1]},{_OVERLAY_OPTS}"
    mounts.mount("overlay", target, "overlay", mounts.MS_NOSUID | mounts.MS_NODEV, opts)


def _source_root(spec: dict[str, Any], stage: dict[str, Any], tmp: str, n: int) -> str:
    """A read-only view of another stage's root (COPY --from)."""
    if not stage["layers"]:
        return stage["base"]
    target = os.path.join(tmp, f"from{n}")
    os.mkdir(target)
    _overlay(spec["layers_root"], stage["layers"], stage["base"], target, None)
    return target


def _copy(spec: dict[str, Any], root: str, tmp: str, ids: IdRange) -> None:
    sources: dict[str, str] = {}
    with Writer(root, (ids.base, ids.base)) as w:
        for path in spec.get("mkdirs", []):
            w.makedirs(path)
        for n, item in enumerate(spec.get("items", [])):
            owner = None
            if item.get("chown"):
                uid, gid = resolve_user(root, item["chown"])
                owner = (ids.base + uid, ids.base + gid)
            kind = item["kind"]
            w.mode = int(item["chmod"], 8) if item.get("chmod") else None
            if kind == "data":
                w.write_file(item["dest"], item["data"].encode(), item.get("mode", 0o644),
                             owner=owner)
            elif kind == "tar":
                w.extract_tar(item["archive"], item["dest"], owner)
            else:
                src_root = item.get("src_root")
                if item.get("stage") is not None:
                    key = item["stage"]["key"]
                    if key not in sources:
                        sources[key] = _source_root(spec, item["stage"], tmp, n)
                    src_root = sources[key]
                w.copy_tree_from(src_root, item["src"], item["dest"], item["into_dir"], owner,
                                 frozenset(item.get("exclude", ())))


def _run(spec: dict[str, Any], root: str, ids: IdRange) -> int:
    run = spec["run"]
    uid, gid = resolve_user(root, run.get("user") or "0")
    with Writer(root, (ids.base, ids.base)) as w:
        for d in (*_MOUNT_POINTS, run["cwd"]):
            w.makedirs(d)
    network = bool(run.get("network"))
    info_r, info_w = os.pipe()
    ublock_r, ublock_w = os.pipe()
    # With a network, the command waits at a gate (a shell inside the sandbox) until the
    # build's slirp4netns has set it up; slirp4netns can join the sandbox's namespaces only
    # once bubblewrap has built it, which the gate's "ready" tells. Two FIFOs under the
    # sandbox's own /dev (a tmpfs: nothing of them lands in the layer).
    fifo_dir = os.path.dirname(root)
    ready_fifo, gate_fifo = os.path.join(fifo_dir, "ready"), os.path.join(fifo_dir, "gate")
    gate_binds: list[str] = []
    seccomp = os.open(run["seccomp"], os.O_RDONLY)
    command = list(run["argv"])
    if network:
        for fifo in (ready_fifo, gate_fifo):
            os.mkfifo(fifo, 0o600)
            os.chown(fifo, ids.base + uid, ids.base + gid)
        gate_binds = ["--bind", ready_fifo, "/dev/.build-ready", "--bind", gate_fifo, "/dev/.build-gate"]
        gate = 'echo ready > /dev/.build-ready; read _ < /dev/.build-gate; exec "$@"'
        command = ["/bin/sh", "-c", gate, "build-net", *command]
    user_binds: list[str] = []
    if (uid, gid) != (0, 0):
        # bubblewrap leaves the mapped sandbox at uid 0 (it does not switch when the
        # parent writes the maps): a static helper switches to the USER and drops root's
        # capabilities with it.
        if not run.get("user_helper"):
            raise StepError(f"USER {run.get('user')!r} needs the build-user helper, which "
                            "could not be built here (a C compiler with static libc)")
        user_binds = ["--ro-bind", run["user_helper"], "/dev/.build-user"]
        command = ["/dev/.build-user", str(uid), str(gid), *command]
    caps = hardening_args()
    env: list[str] = ["--clearenv"]
    for key, value in run["env"].items():
        env += ["--setenv", key, value]
    argv = [run["setpriv"], f"--reuid={ids.base}", f"--regid={ids.base}", "--clear-groups",
            "--", run["bwrap"], "--unshare-user", "--userns-block-fd", str(ublock_r),
            "--info-fd", str(info_w), "--unshare-net",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "buildkitsandbox", "--uid", "0", "--gid", "0",
            "--bind", root, "/", "--dev", "/dev", *gate_binds, *user_binds, "--proc", "/proc",
            # Read-only even to root inside (whose host uid owns no sysctl anyway).
            "--ro-bind", "/proc/sys", "/proc/sys", *caps, "--seccomp", str(seccomp),
            "--die-with-parent", *env, "--chdir", run["cwd"], "--", *command]
    passed = [info_w, ublock_r, seccomp]
    proc = subprocess.Popen(argv, env=dict(HOST_ENV), stdin=subprocess.DEVNULL,
                            pass_fds=passed, cwd="/",
                            preexec_fn=_killable)  # noqa: PLW1509 (this process has one thread)
    for fd in passed:
        os.close(fd)
    slirp = None
    try:
        info, child = b"", 0
        while chunk := os.read(info_r, 4096):
            info += chunk
            try:
                child = int(json.loads(info)["child-pid"])
                break
            except ValueError:
                continue
        os.close(info_r)
        info_r = -1
        if not child:  # bubblewrap failed before its namespaces existed: its stderr says why
            return proc.wait()
        write_maps(child, ids)
        os.write(ublock_w, b"1")
        if network and _await_ready(ready_fifo, proc):
            slirp = _egress(run, child, ids)
            gate = os.open(gate_fifo, os.O_RDWR)  # RDWR: never blocks on a FIFO
            try:
                os.write(gate, b"go\n")
            finally:
                os.close(gate)
        return proc.wait()
    finally:
        for fd in (info_r, ublock_w):
            if fd >= 0:
                os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if slirp is not None:
            slirp.kill()
            slirp.wait()


_USER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_user.c")


def user_helper() -> str | None:
    """The build-user helper (build_user.c), compiled static once per source version into
    the slot-enter cache (/var/tmp/rollout-slot-enter); None when it cannot be built."""
    from sandbox_image.container import _only_ours
    try:
        with open(_USER_SOURCE, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None
    cache = "/var/tmp/rollout-slot-enter"
    target = os.path.join(cache, f"build-user-{digest}")
    try:
        os.mkdir(cache, 0o755)
    except FileExistsError:
        pass
    if not _only_ours(cache):
        return None
    if os.path.lexists(target):
        return target if _only_ours(target) else None
    cc = shutil.which("cc", path=HOST_ENV["PATH"]) or shutil.which("gcc", path=HOST_ENV["PATH"])
    if cc is None:
        return None
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        proc = subprocess.run([cc, "-static", "-O2", "-o", tmp, _USER_SOURCE], capture_output=True,
                              timeout=120, env=dict(HOST_ENV), check=False)
        if proc.returncode != 0:
            return None
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError):
        return None
    return target


def _await_ready(fifo: str, proc: subprocess.Popen[bytes]) -> bool:
    """Wait for the gate's "ready" (False if the sandbox ended first)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while proc.poll() is None:
            readable, _, _ = select.select([fd], [], [], 0.05)
            if readable and os.read(fd, 16).startswith(b"ready"):
                return True
        return False
    finally:
        os.close(fd)


def _oom_score(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass


def _killable() -> None:
    _oom_score(0)


def _egress(run: dict[str, Any], child: int, ids: IdRange) -> subprocess.Popen[bytes]:
    """The build's own user-mode network (slirp4netns), never the host's namespace."""
    ready_r, ready_w = os.pipe()
    slirp = subprocess.Popen(
        [run["setpriv"], f"--reuid={ids.base}", f"--regid={ids.base}", "--clear-groups", "--",
         run["slirp"], "--configure", "--mtu=65520", "--disable-host-loopback",
         f"--ready-fd={ready_w}", f"--userns-path=/proc/{child}/ns/user",
         "--netns-type=path", f"/proc/{child}/ns/net", "tap0"],
        env=dict(HOST_ENV), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, pass_fds=(ready_w,))
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as f:
        if not f.read(1):
            slirp.kill()
            why = slirp.communicate()[1].decode(errors="replace").strip()[-300:]
            raise StepError(f"slirp4netns (the build's network) did not start: {why}")
    return slirp


def step(spec: dict[str, Any]) -> dict[str, Any]:
    ids = IdRange(spec["uid_base"])
    mounts.enter_private_mount_namespace()
    # The build's memory limit should end the RUN rather than this process (the server
    # cleans up after either; without CAP_SYS_RESOURCE this is refused, and that is fine).
    _oom_score(-1000)
    # bubblewrap runs as the unprivileged uid: the root it binds must be reachable by it
    # (the server made this directory, 0711 under /tmp, and removes it after the step).
    tmp = spec["mount_dir"]
    scratch_image = None
    try:
        scratch, base, merged = (os.path.join(tmp, d) for d in ("s", "b", "m"))
        for d in (scratch, base, merged):
            os.mkdir(d, 0o711)
        scratch_image = _mount_scratch(spec, scratch)
        upper, work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        os.chown(upper, ids.base, ids.base)
        ns = MappingNamespace(ids)
        try:
            idmapped_clone(spec["base"], base, ns.fd)
        finally:
            ns.close()
        _overlay(spec["layers_root"], spec["layers"], base, merged, (upper, work))
        code = 0
        if spec.get("run"):
            code = _run(spec, merged, ids)
        else:
            _copy(spec, merged, tmp, ids)
        st = os.statvfs(scratch)
        disk_full = bool(spec.get("disk_bytes")) and st.f_bavail * st.f_frsize < (1 << 20)
        if code == 0:
            # cp -a keeps what the layer means to overlayfs: whiteouts (0/0 char devices),
            # opaque directories (trusted.overlay.opaque), owners, modes, links.
            out = spec["out"]
            os.mkdir(out, 0o755)
            proc = subprocess.run(["cp", "-a", "--", f"{upper}/.", f"{out}/"],
                                  capture_output=True, env=dict(HOST_ENV), timeout=3600,
                                  check=False)
            if proc.returncode != 0:
                raise StepError("copying the step's layer out failed: "
                                + proc.stderr.decode(errors="replace").strip()[-300:])
        return {"exit": code, "disk_full": disk_full}
    finally:
        os.chdir("/")
        for target in mounts.mounts_under(tmp):
            try:
                mounts.unmount(target)
            except OSError:
                pass
        if scratch_image:
            try:
                os.unlink(scratch_image)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        result = step(spec)
    except (StepError, OSError, subprocess.SubprocessError) as e:
        result = {"error": str(e)}
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
