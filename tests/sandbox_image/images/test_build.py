"""Dockerfile builds as people write them, in a sandbox that cannot touch the host.

Each RUN runs in a user namespace (root inside is an unprivileged uid outside) under the
build's pids, memory, disk and time limits; every path a COPY/ADD writes is resolved inside
the image's root. Layers are cached per instruction, keyed by the parent's key."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from sandbox_image.images import ImageStore
from sandbox_image.images.dockerfile import (
    DockerfileBuilder,
    DockerfileError,
    load,
    parse,
)

from .build import BuiltImage, build_oci_layout
from .conftest import base_layer
from .debian_image import make_deb

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0,
                                reason="builds need bubblewrap and root")


def builder(store: ImageStore, **kw: object) -> DockerfileBuilder:
    opts: dict[str, object] = {"bwrap": "bwrap", "network": False, "run_timeout": 60,
                               "memory_mb": 512, "pids": 256, "disk_mb": 256}
    opts.update(kw)
    return DockerfileBuilder(store, store.root, **opts)  # type: ignore[arg-type]


def context(tmp: Path, text: str, files: dict[str, str | bytes] | None = None) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    for name, data in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_bytes(data.encode() if isinstance(data, str) else data)
    (ctx / "Dockerfile").write_text(text)
    return ctx


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"unpacked by ADD\n"
        info = tarfile.TarInfo("pkg/inner.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS tools
RUN mkdir -p /out && echo built-in-stage-one > /out/artifact.txt

FROM --platform=$BUILDPLATFORM ${BASE}
ARG GREETING=hello
ARG FROM_CONFIG
ENV APP_HOME=/srv/app
LABEL org.example.task="demo" version=1
EXPOSE 8080
WORKDIR $APP_HOME
RUN cat <<'EOF' > literal.txt
no $expansion here
EOF
COPY <<EOF config.ini
greeting=${GREETING}
EOF
RUN --mount=type=cache,target=/root/.cache <<EOF
echo "$GREETING $FROM_CONFIG" > args.txt
echo scratch > /tmp/kept-between-steps
EOF
RUN cat /tmp/kept-between-steps > tmp-was.txt && rm /etc/group
RUN rm -rf /etc/apt && mkdir /etc/apt && echo new > /etc/apt/only.txt
RUN ls /etc/apt > apt-list.txt && cat /proc/self/uid_map > uid-map.txt \
    && v=$(cat /proc/sys/kernel/core_uses_pid) && ! (echo "$v" > /proc/sys/kernel/core_uses_pid) 2>/dev/null
ADD bundle.tar.gz /opt/
ADD notes.txt /opt/notes.txt
COPY --chmod=0750 notes.txt /opt/run-me
COPY --from=tools /out/artifact.txt ./
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && mkdir -p /home/app \
    && chown 1000:1000 /home/app
USER app
RUN id -u > /home/app/uid.txt
COPY --chown=app notes.txt /home/app/notes.txt
USER root
SHELL ["/bin/bash", "-c"]
RUN [[ -n "$BASH_VERSION" ]] && echo bash > shell.txt
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo serving"]
"""


async def test_a_dockerfile_as_people_write_it(store: ImageStore, debian_image: BuiltImage,
                                               tmp_path: Path) -> None:
    ctx = context(tmp_path, DOCKERFILE, {"bundle.tar.gz": _tarball(), "notes.txt": "notes\n"})
    ctx_base = f"oci:{debian_image.path}"
    b = builder(store, build_args={"BASE": ctx_base, "FROM_CONFIG": "from-config"})
    text = DOCKERFILE
    layout = await b.build(ctx)
    async with store.use(f"oci:{layout}") as image:
        app = image.rootfs / "srv" / "app"
        assert (app / "literal.txt").read_text() == "no $expansion here\n"
        assert (app / "config.ini").read_text() == "greeting=hello\n"
        assert (app / "args.txt").read_text() == "hello from-config\n"
        assert (app / "tmp-was.txt").read_text() == "scratch\n"  # /tmp persists between RUNs
        assert (app / "artifact.txt").read_text() == "built-in-stage-one\n"
        assert (app / "shell.txt").read_text() == "bash\n"
        assert (image.rootfs / "opt" / "pkg" / "inner.txt").read_text() == "unpacked by ADD\n"
        assert (image.rootfs / "opt" / "notes.txt").read_text() == "notes\n"
        assert (image.rootfs / "opt" / "run-me").stat().st_mode & 0o7777 == 0o750
        assert (image.rootfs / "home" / "app" / "uid.txt").read_text() == "1000\n"
        assert (image.rootfs / "home" / "app" / "notes.txt").read_text() == "notes\n"
        assert not (image.rootfs / "etc" / "group").exists()  # deleted by a RUN (a whiteout)
        # A directory replaced by a RUN hides the base's (an opaque directory), in the next
        # step's root as in the image.
        assert (app / "apt-list.txt").read_text() == "only.txt\n"
        assert os.listdir(image.rootfs / "etc" / "apt") == ["only.txt"]
        # Root in a RUN is the slots' unprivileged host range; /proc/sys was read-only.
        assert (app / "uid-map.txt").read_text().split() == ["0", "100000", "65536"]
        assert not (image.rootfs / "out").exists()  # stage one's files stay in stage one
        c = image.config
        assert c.entrypoint == ["/bin/sh", "-c"] and c.cmd == ["echo serving"]
        assert c.labels == {"org.example.task": "demo", "version": "1"}
        assert c.working_dir == "/srv/app" and c.env_dict()["APP_HOME"] == "/srv/app"
        assert "GREETING" not in c.env_dict()  # ARGs are build-time only
    cold = dict(b.stats)
    assert cold["steps_run"] >= 15 and cold["steps_cached"] == 0
    # An edit to one step reruns that step and the ones after it, nothing before.
    (ctx / "Dockerfile").write_text(text.replace('echo bash > shell.txt', 'echo BASH > shell.txt'))
    again = builder(store, build_args={"BASE": ctx_base, "FROM_CONFIG": "from-config"})
    await again.build(ctx)
    assert again.stats == {"steps_run": 1, "steps_cached": cold["steps_run"] - 1}


async def test_apt_get_installs_a_deb_from_the_context(store: ImageStore, debian_image: BuiltImage,
                                                       tmp_path: Path) -> None:
    ctx = context(tmp_path, f"FROM oci:{debian_image.path}\n"
                            "COPY hello-rollout.deb /tmp/\n"
                            "RUN apt-get install -y /tmp/hello-rollout.deb > /apt.log 2>&1\n"
                            "RUN hello-rollout > /done.txt && dpkg -s hello-rollout | grep -q 'install ok'\n")
    make_deb(ctx, "hello-rollout", "/usr/bin/hello-rollout", "#!/bin/sh\necho hello from the deb\n")
    layout = await builder(store).build(ctx)
    async with store.use(f"oci:{layout}") as image:
        assert (image.rootfs / "done.txt").read_text() == "hello from the deb\n"
        log = (image.rootfs / "apt.log").read_text()
        assert "setgroups" not in log and "unsandboxed" not in log, log  # _apt (65534) is mapped


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_text("original")
    return d


async def test_writes_never_leave_the_image_root(store: ImageStore, debian_image: BuiltImage,
                                                 tmp_path: Path, outside: Path) -> None:
    ctx = context(tmp_path, f"FROM oci:{debian_image.path}\n"
                            f"RUN mkdir -p /app && ln -s {outside}/victim /app/f && ln -s {outside} /app/d"
                            f" && ln -s ../../../../../../../../{str(outside).lstrip('/')} /app/rel\n"
                            "COPY f /app/\n"
                            "COPY f /app/d/new\n"
                            "COPY f /app/rel/new2\n"
                            "ENV LD_PRELOAD=/nonexistent/evil.so\n"
                            "WORKDIR /app/d/wd\n"
                            "RUN echo ran > /app/ran.txt\n",
                  {"f": "payload\n"})
    layout = await builder(store).build(ctx)
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "original"
    async with store.use(f"oci:{layout}") as image:
        # The link at the destination was replaced; links on the way were followed inside
        # the image: its own copy of the host path got the files.
        assert (image.rootfs / "app" / "f").read_text() == "payload\n"
        inside = image.rootfs / str(outside).lstrip("/")
        assert (inside / "new").read_text() == "payload\n"
        assert (inside / "new2").read_text() == "payload\n"
        assert (inside / "wd").is_dir()
    # A context symlink to a host file is refused, not read (named, or matched by a glob).
    os.symlink("/etc/passwd", tmp_path / "ctx" / "hostlink")
    for source in ("hostlink", "host*"):
        (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM oci:{debian_image.path}\nADD {source} /x\n")
        with pytest.raises(DockerfileError, match="line 2: ADD source 'hostlink' is outside the build context"):
            await builder(store).build(tmp_path / "ctx")


@pytest.mark.parametrize("run, limit, message", [
    ("i=0; while [ $i -lt 200 ]; do sleep 10 & i=$((i+1)); done; wait", {"pids": 64},
     "process limit (64)"),
    ("a=xxxxxxxxxxxxxxxx; while :; do a=$a$a; done", {"memory_mb": 64}, "memory limit (64 MiB)"),
    ("dd if=/dev/zero of=/big bs=1M count=200", {"disk_mb": 32}, "disk limit (32 MiB)"),
    ("sleep 30", {"run_timeout": 2}, "timed out after 2s"),
])
async def test_a_run_past_a_limit_fails_the_build(store: ImageStore, debian_image: BuiltImage,
                                                  tmp_path: Path, run: str, limit: dict,
                                                  message: str) -> None:
    ctx = context(tmp_path, f"FROM oci:{debian_image.path}\nRUN {run}\n")
    b = builder(store, **limit)
    with pytest.raises(DockerfileError, match=rf"line 2: RUN .* failed \(.*{re.escape(message)}"):
        await b.build(ctx)
    with pytest.raises(DockerfileError, match=re.escape(message)):  # remembered: no second build
        await b.build(ctx)
    assert b.stats["steps_run"] == 0
    assert not list((store.root / "builds" / "layers").glob("*/diff"))


async def test_the_cache_key_covers_links_and_the_base(store: ImageStore,
                                                       tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    build_oci_layout(base_dir, [base_layer()], None)
    ctx = context(tmp_path, f"FROM oci:{base_dir}\nCOPY . /ctx/\nCOPY link /followed\n", {"a.txt": "a\n"})
    os.symlink("a.txt", ctx / "link")
    (ctx / ".dockerignore").write_text("# not for the image\n*.tmp\nsecret\n")
    (ctx / "scratch.tmp").write_text("left out\n")
    (ctx / "secret").mkdir()
    (ctx / "secret" / "key").write_text("left out\n")
    first = await builder(store).build(ctx)
    (ctx / "scratch.tmp").write_text("changed, and still left out\n")
    assert await builder(store).build(ctx) == first  # an ignored file is no input
    (ctx / "link").unlink()
    os.symlink("Dockerfile", ctx / "link")  # only the link target changed
    second = await builder(store).build(ctx)
    assert second != first
    shutil.rmtree(base_dir)  # a different base at the same path
    build_oci_layout(base_dir, [{**base_layer(), "etc/motd": b"another base\n"}], None)
    third = await builder(store).build(ctx)
    assert third not in (first, second)
    async with store.use(f"oci:{third}") as image:
        assert (image.rootfs / "etc" / "motd").read_text() == "another base\n"
        assert os.readlink(image.rootfs / "ctx" / "link") == "Dockerfile"  # inside a dir: a link
        assert (image.rootfs / "followed").read_text().startswith("FROM")  # named: followed
        assert sorted(os.listdir(image.rootfs / "ctx")) == [".dockerignore", "Dockerfile", "a.txt", "link"]


@pytest.mark.parametrize("text, message", [
    ("FROM base\nONBUILD RUN true\n", "line 2: ONBUILD is not supported"),
    ("FROM base\nRUN --mount=type=secret,id=x true\n", "line 2: RUN --mount=type=secret is not supported"),
    ("FROM base\nRUN --privileged true\n", "line 2: RUN --privileged is not supported"),
    ("FROM base\nADD https://example.com/x.tgz /x\n", "line 2: ADD of a URL is not supported"),
    ("FROM base\nCOPY --from=nowhere /a /b\n", "line 2: COPY --from=nowhere: no earlier stage"),
    ("FROM base\nRUN cat <<EOF\nnever closed\n", "line 2: heredoc <<EOF is never closed"),
    ("RUN true\n", "must start with FROM"),
])
def test_refused_at_load_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse(text)
    (tmp_path / "Dockerfile").write_text(text)
    with pytest.raises(DockerfileError, match=message):
        load(tmp_path)


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns is not installed")
async def test_builds_get_a_network_only_by_their_own_setting(store: ImageStore, debian_image: BuiltImage,
                                                              tmp_path: Path) -> None:
    ctx = context(tmp_path, f"FROM oci:{debian_image.path}\nRUN cat /proc/net/dev > /net.txt\n")
    for network, has_tap in ((False, False), (True, True)):
        b = builder(store, network=network)
        async with store.use(f"oci:{await b.build(ctx)}") as image:
            devices = (image.rootfs / "net.txt").read_text()
            assert ("tap0" in devices) is has_tap and "lo:" in devices
        shutil.rmtree(store.root / "builds" / "layers")  # the same step again, the other way
        (store.root / "builds" / "layers").mkdir()
