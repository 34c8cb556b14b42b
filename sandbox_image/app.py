"""HTTP routes of the slot server (aiohttp) and bearer-token auth.

Every route except GET /livez needs `Authorization: Bearer <token>` (missing -> 401,
wrong -> 403). Errors are JSON `{"error": "..."}` with a 4xx/5xx status. Every body and
query is validated by the models in `api` first: a malformed request is a 400 naming the
field, an oversized one (command, env, body) a 413 naming the limit; a write that finds the
slot's disk full is a 507.

    GET  /livez                          liveness, no auth
    GET  /health                         slots, isolation, limits, workspace path, version
    POST /slots/{i}/exec                 {command, timeout?, cwd?, env?, grading?} -> result
                                         (grading: in an image slot with a writable root,
                                         the image's own toolchain, see grading_view.py)
    POST /slots/{i}/python               {code, timeout?} -> the slot's stateful Python session:
                                         {stdout, stderr, result, error, timed_out,
                                         session_lost, message, duration}
    POST /slots/{i}/reset                {image?} -> wipe the workspace, kill its processes,
                                         restore the image's workdir (or switch image); ends
                                         the slot's lease, unless {keep_lease: true}
    POST /slots/{i}/refresh              the same under the slot's lease, which it keeps (the
                                         holder's own wipe: a fresh slot for grading)

Slot requests carry `X-Slot-Lease: <lease>` (minted by the pool per acquire): the first
request of a lease makes it the slot's lease, a reset ends it, and a request with an ended
lease is refused (403), so a holder whose lease ended can no longer touch the slot; with
--leases required, a slot request without a lease is refused too. Instead of the bearer
token, a slot's command, file and refresh routes take `X-Slot-Key` (api.lease_key: minted by the
pool, which holds the token, for one lease of one slot): how workers reach a slot directly.
    GET  /slots/{i}/file?path=&max_bytes=&encoding=raw|text|base64
    PUT  /slots/{i}/file?path=           raw body
    GET  /slots/{i}/list?path=
    GET  /slots/{i}/archive?path=        tar.gz
    POST /slots/{i}/upload?path=         tar(.gz) body, extracted safely
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hmac
import logging
import os
import shlex
import shutil
from typing import Any

from aiohttp import web

from sandbox_image import VERSION, api, files, grading_view
from sandbox_image.api import KEY_HEADER, LEASE_HEADER, BadRequest, ExecRequest, lease_key
from sandbox_image.config import HOST_IMAGE, ServerConfig
from sandbox_image.disks import DiskError, SlotDisks
from sandbox_image.isolation import HOST_ENV, Bubblewrap, default_env
from sandbox_image.limits import SlotCgroups
from sandbox_image.python_sessions import PythonSessions
from sandbox_image.runner import CommandResult, Launch, run_command
from sandbox_image.spawn import detach_from_terminal, die_with_server
from sandbox_image.slot_images import SlotImage, SlotImageError, SlotImages
from sandbox_image.slot_containers import SlotContainers
from sandbox_image.slots import SlotWorkspaces

log = logging.getLogger(__name__)

_ENDED_KEPT = 256  # ended leases remembered per slot
# The routes a lease's key opens (its slot's commands and files).
_KEYED_ROUTES = frozenset({"exec", "python", "read_file", "write_file", "list_dir", "archive",
                           "upload", "refresh"})

# Without bubblewrap, setpriv (util-linux) sets the parent-death signal before exec'ing
# the command, so a command never outlives a server killed with SIGKILL.
_SETPRIV = shutil.which("setpriv")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class GradingRefused(Exception):
    """A grading command cannot run as asked (the agent changed the slot's system layout):
    its result is exit 126 with the reason, a run that did not happen, never a score."""


class SlotServer:
    """Holds the state shared by all routes. Single event loop; no locks needed because
    state changes happen between awaits."""

    def __init__(self, cfg: ServerConfig, isolation: str, bwrap: Bubblewrap | None,
                 workspace_inside: str, disks: SlotDisks | None = None,
                 images: SlotImages | None = None) -> None:
        self.cfg = cfg
        self.slot_limits = cfg.limits
        self.isolation = isolation  # "bwrap" | "none"
        self.bwrap = bwrap
        self.workspace_inside = workspace_inside
        self.disks = disks
        self.images = images or SlotImages(cfg, isolation=isolation, host_bwrap=bwrap,
                                           host_workspace=workspace_inside, hide=[],
                                           tmp_size=None)
        # Slots start in the host view; `start()` moves them into cfg.image if it is not.
        label = cfg.image if self.images.is_host(cfg.image) else HOST_IMAGE
        self.slot_image: list[SlotImage] = [self.images.host(label)] * cfg.slots
        self.writable: list[str | None] = [None] * cfg.slots
        # The image root under each slot's writable root overlay (its lower layer), if any.
        self.lowers: list[str | None] = [None] * cfg.slots
        self.containers = SlotContainers(cfg, isolation)
        self.owner = self.containers.owner
        self.connections: Any = None  # the ConnectionGuard (set by __main__), for /health
        self.workspaces = SlotWorkspaces(cfg.data_dir, cfg.slots, disks, owner=self.owner)
        self.limits = SlotCgroups(cfg.slots, cfg.limits.memory_mb, cfg.limits.pids)
        self._token = cfg.token.encode()
        # Each slot's current lease, and the last leases a reset ended (never valid again).
        self.leases: list[str | None] = [None] * cfg.slots
        self._ended: list[dict[str, None]] = [{} for _ in range(cfg.slots)]
        self._session_per_command = not detach_from_terminal()
        if self._session_per_command:
            log.warning("the server leads a session with a terminal: every command gets its "
                        "own session (slower); start it with setsid or from a service manager")
        self._env_base = {i: self._base_env(i) for i in range(cfg.slots)}
        self.python = PythonSessions(
            cfg.slots, launch=lambda i, command: self.launch_spec(i, ExecRequest(command=command)),
            limits=self.limits, running=self.workspaces.running,
            output_cap=cfg.limits.output_cap, new_session=self._session_per_command)

    async def _fill(self, i: int, image: SlotImage) -> None:
        """Give slot i (empty, its processes gone) the image's files and its container."""
        if self.containers.enabled and image.image is not None and self.disks is not None:
            lower = await self.containers.lower(image.image.digest, str(image.image.rootfs))
            await self.workspaces.mount_root(i, lower, image.workdir)
            self.writable[i] = "root"
            self.lowers[i] = lower
        else:
            self.writable[i] = await self.workspaces.populate(i, image,
                                                              self.slot_limits.writable)
        if self.containers.enabled:
            await self.containers.start(i, self._mounts(i), self.limits.wrapper_for(i),
                                        self.limits.self_join_files(i))
            if image.service:
                await self._start_service(i, image)

    async def _start_service(self, i: int, image: SlotImage) -> None:
        """The image's command (Entrypoint + Cmd), started in the background in slot i's
        container, as Docker starts a container's command: it lives until the slot's reset.
        Its output goes to /tmp/service.log in the slot."""
        workdir = (image.image.working_dir if image.image else "") or image.workdir or "/"
        script = (f"cd {shlex.quote(workdir)} 2>/dev/null; ( exec {shlex.join(image.service)} ) "
                  "> /tmp/service.log 2>&1 < /dev/null &")
        result = await self.execute(i, ExecRequest(command=script, timeout=30))
        if result.exit_code != 0:
            raise SlotImageError(f"cannot start the image's command {list(image.service)}: "
                                 f"{(result.stderr or result.stdout).strip()[-300:]}", 500)
        log.info("slot %d: started the image's command %s", i, list(image.service))

    def _mounts(self, i: int) -> list[str]:
        image = self.slot_image[i]
        assert image.bwrap is not None
        scratch = self.workspaces.scratch(i)
        root = self.workspaces.roots[i]
        if root is not None:
            return image.bwrap.mount_args(None, image.workdir, scratch, root=root)
        return image.bwrap.mount_args(self.workspaces.paths[i], image.workdir, scratch)

    def _base_env(self, i: int) -> dict[str, str]:
        home = "/tmp" if self.isolation == "bwrap" else self.workspaces.home(i)
        env = default_env(home)
        scratch = self.workspaces.scratch(i)
        if self.isolation != "bwrap" and scratch is not None:
            env["TMPDIR"] = scratch[0]  # the slot disk's /tmp, as under bwrap
        env.update(self.slot_limits.env)
        env.update(self.slot_image[i].env)  # an image's own Env and PATH win for its slots
        return env

    async def start(self) -> None:
        """Put every slot into the server's image (pulled/unpacked once, before READY) and
        start its container."""
        if self.images.is_host(self.cfg.image):
            for i in range(self.cfg.slots):
                await self._fill(i, self.slot_image[i])
            return
        first = await self.images.load(self.cfg.image)
        try:
            for i in range(self.cfg.slots):
                image = first if i == 0 else await self.images.load(self.cfg.image)
                self.slot_image[i] = image
                self._env_base[i] = self._base_env(i)
                await self._fill(i, image)
        except BaseException:
            for image in self.slot_image:
                self.images.release(image)
            raise

    async def reset(self, i: int, image: str | None = None) -> None:
        """Wipe slot i and restore its image's workdir; with `image`, move it to that image
        (the old image is released only once the new one is loaded: a failed load leaves
        the slot as it was, a failed restore leaves it empty and the error is raised)."""
        old = self.slot_image[i]
        new = old if image is None or image == old.label else await self.images.load(image)
        await self.python.stop(i)
        await self.containers.stop(i)
        await self.workspaces.reset(i, kill=lambda: self.limits.kill_slot(i))
        self.slot_image[i] = new
        if new is not old:
            self.images.release(old)
        self._env_base[i] = self._base_env(i)
        self.writable[i] = None
        self.lowers[i] = None
        await self._fill(i, new)

    # --- helpers --------------------------------------------------------------------------

    def slot_index(self, raw: Any) -> int:
        try:
            i = int(raw)
        except (TypeError, ValueError):
            raise BadRequest(f"slot must be an integer, got {raw!r}") from None
        if not 0 <= i < self.cfg.slots:
            raise BadRequest(f"no slot {i}: this server has slots 0..{self.cfg.slots - 1}", 404)
        return i

    def ws_inside(self, i: int) -> str:
        return self.slot_image[i].workdir if self.isolation == "bwrap" else self.workspaces.paths[i]

    async def execute(self, i: int, req: ExecRequest) -> CommandResult:
        timeout = req.effective_timeout(self.slot_limits)
        await self.containers.get(i)
        try:
            launch = self.launch_spec(i, req)
        except GradingRefused as e:
            log.warning("slot %d: %s", i, e)
            return CommandResult(126, "", str(e))
        running = self.workspaces.running[i]
        oom_before = self.limits.oom_kills(i)
        pid_box: list[int] = []

        def on_start(pid: int) -> None:
            pid_box.append(pid)
            running.add(pid)

        try:
            return await run_command(
                launch.argv, env=launch.env, cwd=launch.cwd, timeout=timeout,
                output_cap=self.slot_limits.output_cap,
                output_kill=self.slot_limits.output_kill,
                preexec=launch.preexec, on_start=on_start, on_exit=running.discard,
                new_session=self._session_per_command,
                oom_check=lambda: self.limits.oom_kills(i) > oom_before,
                extra_actions=launch.actions, keep_background=launch.keep_background,
            )
        except OSError as e:
            if e.errno == errno.E2BIG:  # a backstop: the models keep argv and env small
                raise BadRequest("command and environment are over the kernel's argument "
                                 f"size limit ({e.strerror})", 413) from None
            raise
        finally:
            if pid_box:
                running.discard(pid_box[0])

    def launch_spec(self, i: int, req: ExecRequest) -> Launch:
        """How to start `req.command` in slot i: the argv wrapped in the slot's sandbox and
        cgroups, its env and cwd (commands and the Python sessions alike)."""
        env = dict(self._env_base[i])
        if req.env:
            env.update(req.env)
        ws_host = self.workspaces.paths[i]
        cwd = req.cwd or "."
        if cwd == ".":  # the common case: the workspace root, already a real path
            cwd_host = ws_host
        else:
            try:
                cwd_host = files.resolve(ws_host, self.ws_inside(i), cwd)
            except files.PathError as e:
                raise BadRequest(f"cwd: {e}") from None
        if not os.path.isdir(cwd_host):
            raise BadRequest(f"cwd {cwd!r} is not a directory in the workspace")
        bwrap = self.slot_image[i].bwrap
        if bwrap is not None:
            inside = self.slot_image[i].workdir
            rel = "." if cwd_host == ws_host else os.path.relpath(cwd_host, ws_host)
            cwd_inside = inside + ("" if rel == "." else "/" + rel)
            container = self.containers.current(i)
            if container is not None:
                # The command's env goes inside only; host processes get HOST_ENV.
                if req.grading and self.lowers[i] is not None:
                    argv, actions = container.grading_command(
                        req.command, env, cwd_inside, self._toolchain(i))
                    return Launch(argv, dict(HOST_ENV), None, None, tuple(actions), False)
                argv, actions = container.command(req.command, env, cwd_inside)
                return Launch(argv, dict(HOST_ENV), None, None, tuple(actions), True)
            argv = bwrap.argv(ws_host, inside, cwd_inside, req.command,
                              self.workspaces.scratch(i), env=env)
            env = dict(HOST_ENV)
            run_cwd = None  # bwrap --chdir sets the cwd inside; None allows posix_spawn
        else:
            argv, run_cwd = ["/bin/sh", "-c", req.command], cwd_host
        preexec = None
        if bwrap is not None:
            # bwrap --die-with-parent sets the parent-death signal on the outer bwrap process
            # itself, so a SIGKILLed server takes its commands along with no extra exec.
            argv = self.limits.wrapper_for(i) + argv
        elif _SETPRIV:
            argv = self.limits.wrapper_for(i) + [_SETPRIV, "--pdeathsig", "KILL"] + argv
        else:  # slower fallback: a Python preexec_fn does the same in the forked child
            limits = self.limits

            def preexec() -> None:
                die_with_server()
                limits.preexec(i)

        return Launch(argv, env, run_cwd, preexec)

    def _toolchain(self, i: int) -> list[str]:
        """The image's pristine toolchain over slot i's writable root (grading_view.py)."""
        lower, root = self.lowers[i], self.workspaces.roots[i]
        assert lower is not None and root is not None
        image = self.slot_image[i]
        prefixes = grading_view.interpreter_prefixes(lower, self._env_base[i].get("PATH", ""),
                                                     image.workdir)
        try:
            return grading_view.mount_args(lower, root, prefixes)
        except grading_view.ViewError as e:
            raise GradingRefused(f"cannot grade with the image's own toolchain: {e}") from None

    def check_lease(self, i: int, sent: str | None) -> None:
        """Slot i's lease: the pool mints one per acquire and sends it with every request
        for the slot; the first request of a lease makes it the slot's lease, and a reset
        (the release) ends it for good. A request carrying an ended lease is refused: its
        holder's trajectory is over, and the slot may be someone else's now (a request
        still in flight at the release lands here). With --leases required, a request
        without a lease is refused too."""
        if sent is None:
            if self.cfg.leases == "required":
                raise BadRequest(f"slot {i}: this server requires the slot's lease "
                                 f"({LEASE_HEADER} header)", 403)
            return
        if sent in self._ended[i]:
            raise BadRequest(f"slot {i} is not leased by this lease (it was released; the "
                             "slot was reset since)", 403)
        self.leases[i] = sent

    def end_lease(self, i: int) -> None:
        current, self.leases[i] = self.leases[i], None
        if current is not None:
            ended = self._ended[i]
            if len(ended) >= _ENDED_KEPT:
                ended.pop(next(iter(ended)))
            ended[current] = None

    def check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        key = request.headers.get(KEY_HEADER)
        if key is not None and not header:
            self._check_key(request, key)
            return
        if not header.startswith("Bearer "):
            raise BadRequest("missing bearer token", 401)
        if not hmac.compare_digest(header[7:].strip().encode(), self._token):
            raise BadRequest("wrong token", 403)

    def _check_key(self, request: web.Request, key: str) -> None:
        """A lease's key (api.lease_key) opens its slot's commands and files, nothing else:
        not a reset, not the server's routes, not another slot."""
        if request.match_info.route.name not in _KEYED_ROUTES:
            raise BadRequest("a lease key opens only its slot's commands and files", 403)
        lease = request.headers.get(LEASE_HEADER)
        i = self.slot_index(request.match_info.get("slot"))
        if not lease or not hmac.compare_digest(key.encode(),
                                                lease_key(self._token, i, lease).encode()):
            raise BadRequest(f"wrong key for this lease of slot {i}", 403)

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "version": VERSION,
            "slots": self.cfg.slots,
            "isolation": self.isolation,
            "containers": self.containers.enabled,
            "connections": self.connections.describe() if self.connections else None,
            "uid_base": self.owner,
            "network": self.slot_limits.network,
            "workspace": self.workspace_inside if self.isolation == "bwrap" else None,
            "limits": {**self.limits.describe(),
                       **(self.disks.describe() if self.disks else {"disk_mb": None})},
            "output_cap": self.slot_limits.output_cap,
            "file_cap": self.slot_limits.file_cap,
            "command_cap": self.slot_limits.command_cap,
            "exec_timeout_cap": self.slot_limits.exec_timeout_cap,
            "running": sum(len(r) for r in self.workspaces.running),
            "python_sessions": self.python.count(),
            "pid": os.getpid(),
            "image": self.cfg.image,
            "slot_images": [{**img.describe(), "writable": w}
                            for img, w in zip(self.slot_image, self.writable)],
            "image_store": self.images.describe(),
        }

    async def close(self) -> None:
        await self.python.close()
        await self.containers.close()
        await self.workspaces.close()
        for image in self.slot_image:
            self.images.release(image)
        await self.images.close()
        await asyncio.to_thread(self.limits.cleanup)


def _json_error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(server: SlotServer) -> web.Application:
    limits = server.slot_limits
    exec_cap = api.exec_body_cap(limits)
    file_body_cap = limits.file_cap + (1 << 20)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if request.path != "/livez":
                server.check_auth(request)
            return await handler(request)
        except BadRequest as e:
            return _json_error(str(e), e.status)
        except (files.PathError, SlotImageError) as e:
            return _json_error(str(e), e.status)
        except DiskError as e:  # a fresh slot disk could not be made (loop devices, mount)
            log.error("slot disk error serving %s: %s", request.path, e)
            return _json_error(f"cannot make the slot's disk: {e}", 503)
        except web.HTTPException:
            raise
        except OSError as e:
            if e.errno in _DISK_FULL:
                return _json_error(f"the slot's disk is full ({e.strerror}; its limit is "
                                   f"{limits.disk_mb} MiB and {limits.inodes} inodes)", 507)
            log.exception("I/O error serving %s", request.path)
            return _json_error(f"server I/O error: {e.strerror or e}", 500)

    def ws(i: int) -> tuple[str, str]:
        return server.workspaces.paths[i], server.ws_inside(i)

    def leased_slot(request: web.Request) -> int:
        i = server.slot_index(request.match_info["slot"])
        server.check_lease(i, request.headers.get(LEASE_HEADER))
        return i

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response(server.health())

    async def exec_one(request: web.Request) -> web.Response:
        i = leased_slot(request)
        body = await api.read_json(request, exec_cap, "exec request")
        req = api.validate(ExecRequest, body, limits, "exec request")
        result = await server.execute(i, req)
        return web.json_response(result.to_dict())

    async def python(request: web.Request) -> web.Response:
        i = leased_slot(request)
        body = await api.read_json(request, exec_cap, "python request")
        req = api.validate(api.PythonRequest, body, limits, "python request")
        await server.containers.get(i)
        reply = await server.python.call(i, req.code, req.effective_timeout(limits))
        return web.json_response(reply)

    async def reset(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        sent = request.headers.get(LEASE_HEADER)
        if sent is not None or server.leases[i] is not None:
            server.check_lease(i, sent)  # a leased slot is reset by its holder's release
        image, keep = None, False
        if request.can_read_body:
            body = await api.read_json(request, 64 << 10, "reset request")
            req = api.validate(api.ResetRequest, body, limits, "reset request")
            image, keep = req.image, req.keep_lease
        if keep and sent is None:
            raise BadRequest(f"slot {i}: keep_lease needs the slot's lease ({LEASE_HEADER})")
        if not keep:
            server.end_lease(i)
        await server.reset(i, image)
        return web.json_response({"ok": True, **server.slot_image[i].describe(),
                                  "writable": server.writable[i]})

    async def refresh(request: web.Request) -> web.Response:
        """A reset that keeps the lease: its holder gets the slot back as its image made it
        (what grading starts from)."""
        i = leased_slot(request)
        if request.headers.get(LEASE_HEADER) is None:
            raise BadRequest(f"slot {i}: a refresh needs the slot's lease ({LEASE_HEADER})")
        await server.reset(i, None)
        return web.json_response({"ok": True, **server.slot_image[i].describe(),
                                  "writable": server.writable[i]})

    async def read_file(request: web.Request) -> web.Response:
        i = leased_slot(request)
        q = api.query(api.ReadQuery, request, limits)
        data, size = await asyncio.to_thread(
            files.read_file, *ws(i), q.path, q.max_bytes, limits.file_cap)
        headers = {"X-File-Size": str(size)}
        if q.encoding == "raw":
            return web.Response(body=data, headers=headers,
                                content_type="application/octet-stream")
        if q.encoding == "text":
            return web.json_response({"text": data.decode("utf-8", "replace"), "size": size})
        return web.json_response({"base64": base64.b64encode(data).decode(), "size": size})

    async def write_file(request: web.Request) -> web.Response:
        i = leased_slot(request)
        q = api.query(api.PathQuery, request, limits)
        data = await api.read_body(request, limits.file_cap, "file")
        await asyncio.to_thread(files.write_file, *ws(i), q.path, data, server.owner)
        return web.json_response({"ok": True, "size": len(data)})

    async def list_dir(request: web.Request) -> web.Response:
        i = leased_slot(request)
        q = api.query(api.PathQuery, request, limits)
        listing = await asyncio.to_thread(files.list_dir, *ws(i), q.path)
        return web.json_response(listing)

    async def archive(request: web.Request) -> web.Response:
        i = leased_slot(request)
        q = api.query(api.PathQuery, request, limits)
        data = await asyncio.to_thread(files.archive, *ws(i), q.path, limits.file_cap)
        return web.Response(body=data, content_type="application/gzip")

    async def upload(request: web.Request) -> web.Response:
        i = leased_slot(request)
        q = api.query(api.PathQuery, request, limits)
        data = await api.read_body(request, file_body_cap, "upload")
        count = await asyncio.to_thread(files.extract, *ws(i), q.path, data, limits.file_cap,
                                        server.owner)
        return web.json_response({"ok": True, "members": count})

    app = web.Application(middlewares=[guard],
                          client_max_size=max(file_body_cap, exec_cap))
    app.add_routes([
        web.get("/livez", livez),
        web.get("/health", health),
        web.post("/slots/{slot}/exec", exec_one, name="exec"),
        web.post("/slots/{slot}/python", python, name="python"),
        web.post("/slots/{slot}/reset", reset),
        web.post("/slots/{slot}/refresh", refresh, name="refresh"),
        web.get("/slots/{slot}/file", read_file, name="read_file"),
        web.put("/slots/{slot}/file", write_file, name="write_file"),
        web.get("/slots/{slot}/list", list_dir, name="list_dir"),
        web.get("/slots/{slot}/archive", archive, name="archive"),
        web.post("/slots/{slot}/upload", upload, name="upload"),
    ])
    return app
