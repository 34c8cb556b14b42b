"""The external tool server: its own process, `python -m rollout.toolserver`.

HTTP/JSON (aiohttp), every request but /health needs `Authorization: Bearer <token>` (the
token comes from $ROLLOUT_TOOL_SERVER_TOKEN, never from the command line, which `ps` shows):

    GET  /health          {"ok": true}                        (no token: reveals nothing)
    GET  /tools           {"tools": [schema, ...]}
    POST /call            {"name", "arguments"} -> {"content", "is_error"}

Calls run at most `concurrency` at a time (the rest wait their turn), each under its tool's
timeout (a timed-out call is an observation, like a command killed at its timeout). The
server's environment holds the tools' secrets; every answer is scrubbed of every secret
value before it leaves, whatever a remote server echoed back. Logs name the tool and how it
ended, never arguments or answers.

Config (`--config JSON` or `--config-file PATH`): {"tools": {name: {its config}},
"concurrency": 16, "plugins": ["module.name", ...]}; launch.py builds it from the
`tool_server` section.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import logging
import os
from typing import Any

from aiohttp import web

from rollout.toolserver.registry import TOOLS, ExternalTool, ToolFailure, _load_builtins

log = logging.getLogger(__name__)

TOKEN_ENV = "ROLLOUT_TOOL_SERVER_TOKEN"
SCRUBBED = "[secret removed]"


class ToolServer:
    def __init__(self, config: dict[str, Any], token: str,
                 environ: dict[str, str] | None = None) -> None:
        if not token:
            raise ValueError(f"the tool server needs a token (${TOKEN_ENV})")
        environ = dict(os.environ if environ is None else environ)
        _load_builtins()
        for module in config.get("plugins") or []:
            importlib.import_module(module)
        self.tools: dict[str, ExternalTool] = {}
        for name, tool_cfg in (config.get("tools") or {}).items():
            if name not in TOOLS:
                raise ValueError(f"unknown external tool {name!r}; registered: "
                                 f"{', '.join(sorted(TOOLS))}")
            self.tools[name] = TOOLS[name](dict(tool_cfg or {}), environ)
        self._token = token.encode()
        self._secrets = sorted({s for t in self.tools.values() for s in t.secrets() if s}
                               | {token}, key=len, reverse=True)
        self._limit = asyncio.Semaphore(int(config.get("concurrency", 16)))
        self.calls = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=4 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/tools", self._list)
        app.router.add_post("/call", self._call)
        app.on_cleanup.append(self._close)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not (given.startswith("Bearer ")
                    and hmac.compare_digest(given[7:].encode(), self._token)):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"tools": [type(t).schema() for t in self.tools.values()]})

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, SCRUBBED)
        return text

    async def _call(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            name, arguments = body["name"], body.get("arguments") or {}
            assert isinstance(name, str) and isinstance(arguments, dict)
        except Exception:
            return web.json_response({"error": "body must be {name, arguments}"}, status=400)
        tool = self.tools.get(name)
        if tool is None:
            return web.json_response({"content": f"Error: unknown external tool {name!r}; "
                                      f"available: {', '.join(sorted(self.tools))}",
                                      "is_error": True})
        async with self._limit:
            self.calls += 1
            try:
                content, is_error = await asyncio.wait_for(tool.run(arguments), tool.timeout), False
            except ToolFailure as e:
                content, is_error = f"Error: {e}", True
            except TimeoutError:
                content, is_error = f"Error: {name} timed out after {tool.timeout:g}s", True
            except Exception as e:  # a tool bug is the model's observation, not a dead server
                log.exception("external tool %s failed", name)
                content, is_error = f"Error: {name} failed: {type(e).__name__}", True
        log.info("tool %s: %s", name, "error" if is_error else "ok")
        return web.json_response({"content": self.scrub(content), "is_error": is_error})

    async def _close(self, app: web.Application) -> None:
        for tool in self.tools.values():
            await tool.close()
