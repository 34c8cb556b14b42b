"""HTTP routes of the slot server (aiohttp) and bearer-token auth.

Every route except GET /livez needs `Authorization: Bearer <token>` (missing -> 401,
wrong -> 403). Errors are JSON `{"error": "..."}` with a 4xx/5xx status.

    GET  /livez                          liveness, no auth
    GET  /health                         slots, isolation, limits, workspace path, version
    POST /slots/{i}/exec                 {command, timeout?, cwd?, env?} -> result
    POST /exec_batch                     {items: [{slot, command, ...}]} -> {results: [...]}
    POST /slots/{i}/reset                wipe the workspace, kill its processes
    GET  /slots/{i}/file?path=&max_bytes=&encoding=raw|text|base64
    PUT  /slots/{i}/file?path=           raw body
    GET  /slots/{i}/list?path=
    GET  /slots/{i}/archive?path=        tar.gz
    POST /slots/{i}/upload?path=         tar(.gz) body, extracted safely
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import shutil
from typing import Any

from aiohttp import web

from sandbox_image import VERSION, files
from sandbox_image.config import ServerConfig
from sandbox_image.isolation import Bubblewrap, default_env
from sandbox_image.limits import SlotLimits
from sandbox_image.runner import CommandResult, run_command
from sandbox_image.spawn import detach_from_terminal, die_with_server
from sandbox_image.slots import SlotWorkspaces

log = logging.getLogger(__name__)

# Without bubblewrap, setpriv (util-linux) sets the parent-death signal before exec'ing
# the command, so a command never outlives a server killed with SIGKILL.
_SETPRIV = shutil.which("setpriv")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BATCH = 1024


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SlotServer:
    """Holds the state shared by all routes. Single event loop; no locks needed because
    state changes happen between awaits."""

    def __init__(self, cfg: ServerConfig, isolation: str, bwrap: Bubblewrap | None,
                 workspace_inside: str) -> None:
        self.cfg = cfg
        self.isolation = isolation  # "bwrap" | "none"
        self.bwrap = bwrap
        self.workspace_inside = workspace_inside
        self.workspaces = SlotWorkspaces(cfg.data_dir, cfg.slots)
        self.limits = SlotLimits(cfg.slots, cfg.memory_mb, cfg.pids)
        self._token = cfg.token.encode()
        self._session_per_command = not detach_from_terminal()
        if self._session_per_command:
            log.warning("the server leads a session with a terminal: every command gets its "
                        "own session (slower); start it with setsid or from a service manager")
        self._env_base = {i: self._base_env(i) for i in range(cfg.slots)}

    def _base_env(self, i: int) -> dict[str, str]:
        home = "/tmp" if self.isolation == "bwrap" else self.workspaces.home(i)
        env = default_env(home)
        env.update(self.cfg.extra_env)
        return env

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
        return self.workspace_inside if self.isolation == "bwrap" else self.workspaces.paths[i]

    async def execute(self, i: int, spec: dict[str, Any]) -> CommandResult:
        command = spec.get("command")
        if not isinstance(command, str) or "\x00" in command:
            raise BadRequest("command must be a string without NUL bytes")
        try:
            timeout = float(spec.get("timeout") or 60.0)
        except (TypeError, ValueError):
            raise BadRequest("timeout must be a number of seconds") from None
        if timeout <= 0:
            raise BadRequest("timeout must be positive")
        timeout = min(timeout, self.cfg.max_timeout)
        env = dict(self._env_base[i])
        extra = spec.get("env") or {}
        if not isinstance(extra, dict):
            raise BadRequest("env must be an object of strings")
        for key, value in extra.items():
            if not (isinstance(key, str) and _ENV_KEY.match(key) and isinstance(value, str)
                    and "\x00" not in value):
                raise BadRequest(f"bad env entry {key!r}")
            env[key] = value
        ws_host = self.workspaces.paths[i]
        cwd = spec.get("cwd") or "."
        if not isinstance(cwd, str):
            raise BadRequest("cwd must be a string")
        if cwd == ".":  # the common case: the workspace root, already a real path
            cwd_host = ws_host
        else:
            try:
                cwd_host = files.resolve(ws_host, self.ws_inside(i), cwd)
            except files.PathError as e:
                raise BadRequest(f"cwd: {e}") from None
        if not os.path.isdir(cwd_host):
            raise BadRequest(f"cwd {cwd!r} is not a directory in the workspace")
        if self.bwrap is not None:
            rel = "." if cwd_host == ws_host else os.path.relpath(cwd_host, ws_host)
            cwd_inside = self.workspace_inside + ("" if rel == "." else "/" + rel)
            argv = self.bwrap.argv(ws_host, self.workspace_inside, cwd_inside, command)
            run_cwd = None  # bwrap --chdir sets the cwd inside; None allows posix_spawn
        else:
            argv, run_cwd = ["/bin/sh", "-c", command], cwd_host
        running = self.workspaces.running[i]
        oom_before = self.limits.oom_kills(i)
        pid_box: list[int] = []
        preexec = None
        if self.bwrap is not None:
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

        def on_start(pid: int) -> None:
            pid_box.append(pid)
            running.add(pid)

        try:
            return await run_command(
                argv, env=env, cwd=run_cwd, timeout=timeout,
                output_cap=self.cfg.output_cap, output_kill=self.cfg.output_kill,
                preexec=preexec, on_start=on_start, new_session=self._session_per_command,
                oom_check=lambda: self.limits.oom_kills(i) > oom_before,
            )
        finally:
            if pid_box:
                running.discard(pid_box[0])

    def check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise BadRequest("missing bearer token", 401)
        if not hmac.compare_digest(header[7:].strip().encode(), self._token):
            raise BadRequest("wrong token", 403)

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "version": VERSION,
            "slots": self.cfg.slots,
            "isolation": self.isolation,
            "network": self.cfg.network,
            "workspace": self.workspace_inside if self.isolation == "bwrap" else None,
            "limits": self.limits.describe(),
            "output_cap": self.cfg.output_cap,
            "file_cap": self.cfg.file_cap,
            "running": sum(len(r) for r in self.workspaces.running),
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        await self.workspaces.close()
        await asyncio.to_thread(self.limits.cleanup)


def _json_error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(server: SlotServer) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if request.path != "/livez":
                server.check_auth(request)
            return await handler(request)
        except BadRequest as e:
            return _json_error(str(e), e.status)
        except files.PathError as e:
            return _json_error(str(e), e.status)
        except web.HTTPException:
            raise
        except OSError as e:
            log.exception("I/O error serving %s", request.path)
            return _json_error(f"server I/O error: {e.strerror or e}", 500)

    async def body_json(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise BadRequest("body must be JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object")
        return data

    def ws(i: int) -> tuple[str, str]:
        return server.workspaces.paths[i], server.ws_inside(i)

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response(server.health())

    async def exec_one(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        result = await server.execute(i, await body_json(request))
        return web.json_response(result.to_dict())

    async def exec_batch(request: web.Request) -> web.Response:
        items = (await body_json(request)).get("items")
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            raise BadRequest(f"items must be a list of at most {MAX_BATCH} commands")

        async def one(item: Any) -> dict[str, Any]:
            try:
                if not isinstance(item, dict):
                    raise BadRequest("each item must be an object")
                return (await server.execute(server.slot_index(item.get("slot")), item)).to_dict()
            except BadRequest as e:
                return {"error": str(e), "status": e.status}

        results = await asyncio.gather(*(one(item) for item in items))
        return web.json_response({"results": results})

    async def reset(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        server.limits.kill_slot(i)
        await server.workspaces.reset(i)
        return web.json_response({"ok": True})

    def query_path(request: web.Request) -> str:
        return request.query.get("path", ".")

    async def read_file(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        raw_max = request.query.get("max_bytes")
        try:
            max_bytes = int(raw_max) if raw_max is not None else None
        except ValueError:
            raise BadRequest("max_bytes must be an integer") from None
        data, size = await asyncio.to_thread(
            files.read_file, *ws(i), query_path(request), max_bytes, server.cfg.file_cap)
        headers = {"X-File-Size": str(size)}
        encoding = request.query.get("encoding", "raw")
        if encoding == "raw":
            return web.Response(body=data, headers=headers,
                                content_type="application/octet-stream")
        if encoding == "text":
            return web.json_response({"text": data.decode("utf-8", "replace"), "size": size})
        if encoding == "base64":
            return web.json_response({"base64": base64.b64encode(data).decode(), "size": size})
        raise BadRequest("encoding must be raw, text or base64")

    async def write_file(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        data = await request.read()
        await asyncio.to_thread(files.write_file, *ws(i), query_path(request), data)
        return web.json_response({"ok": True, "size": len(data)})

    async def list_dir(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        listing = await asyncio.to_thread(files.list_dir, *ws(i), query_path(request))
        return web.json_response(listing)

    async def archive(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        data = await asyncio.to_thread(
            files.archive, *ws(i), query_path(request), server.cfg.file_cap)
        return web.Response(body=data, content_type="application/gzip")

    async def upload(request: web.Request) -> web.Response:
        i = server.slot_index(request.match_info["slot"])
        data = await request.read()
        count = await asyncio.to_thread(
            files.extract, *ws(i), query_path(request), data, server.cfg.file_cap)
        return web.json_response({"ok": True, "members": count})

    app = web.Application(middlewares=[guard], client_max_size=server.cfg.file_cap + (1 << 20))
    app.add_routes([
        web.get("/livez", livez),
        web.get("/health", health),
        web.post("/slots/{slot}/exec", exec_one),
        web.post("/exec_batch", exec_batch),
        web.post("/slots/{slot}/reset", reset),
        web.get("/slots/{slot}/file", read_file),
        web.put("/slots/{slot}/file", write_file),
        web.get("/slots/{slot}/list", list_dir),
        web.get("/slots/{slot}/archive", archive),
        web.post("/slots/{slot}/upload", upload),
    ])
    return app
