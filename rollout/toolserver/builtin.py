"""The two external tools shipped: `http_fetch` (through a host allow-list, capped) and
`calculator` (arithmetic; it needs nothing outside a slot, and exists to prove the routing)."""

from __future__ import annotations

import ast
import math
import operator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from rollout.toolserver.registry import ExternalTool, ToolFailure, register


@register
class HttpFetch(ExternalTool):
    """GET a URL whose host is on the allow-list. Config: `allow_hosts` (host or host:port),
    `max_bytes` (body cap, default 200000), `timeout`, `auth` (a list of {host: host or
    host:port, env: NAME of an environment variable of the tool server}, or a mapping host ->
    NAME: its value is sent to that host as `Authorization: Bearer <value>`)."""

    name = "http_fetch"
    description = ("Fetch a web page or file over HTTP(S) (GET). Only some hosts are allowed; "
                   "the body is cut at a size limit.")
    parameters = {"type": "object",
                  "properties": {"url": {"type": "string", "description": "http:// or https:// URL"}},
                  "required": ["url"]}

    def __init__(self, config: dict[str, Any], environ: dict[str, str]) -> None:
        super().__init__(config, environ)
        self.allow = {str(h).lower() for h in config.get("allow_hosts") or []}
        self.max_bytes = int(config.get("max_bytes", 200_000))
        self._auth: dict[str, str] = {}
        auth = config.get("auth") or {}
        pairs = (auth.items() if isinstance(auth, dict)
                 else [(a.get("host"), a.get("env")) for a in auth if isinstance(a, dict)])
        for host, var in pairs:
            if var not in environ:
                raise ValueError(f"http_fetch.auth[{host}] names ${var}, which is not set in "
                                 "the tool server's environment")
            self._auth[str(host).lower()] = environ[var]
        self._http: aiohttp.ClientSession | None = None

    def secrets(self) -> list[str]:
        return list(self._auth.values())

    async def run(self, arguments: dict[str, Any]) -> str:
        url = arguments.get("url")
        if not isinstance(url, str) or not url:
            raise ToolFailure("Argument 'url' must be a non-empty string.")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolFailure(f"Refused: {url!r} is not an http(s) URL.")
        host = parts.hostname.lower()
        hostport = f"{host}:{parts.port}" if parts.port else host
        if host not in self.allow and hostport not in self.allow:
            listed = ", ".join(sorted(self.allow)) or "none"
            raise ToolFailure(f"Refused: host {hostport} is not on the allow-list "
                              f"(allowed: {listed}).")
        headers = {}
        token = self._auth.get(hostport) or self._auth.get(host)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            # No redirects: a redirect could leave the allow-list (its target is reported).
            async with self._http.get(url, headers=headers, allow_redirects=False,
                                      timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                body = await r.content.read(self.max_bytes + 1)
                status, ctype = r.status, r.headers.get("Content-Type", "")
                location = r.headers.get("Location")
        except (aiohttp.ClientError, OSError) as e:
            raise ToolFailure(f"Fetching {url} failed: {type(e).__name__}: {e}") from None
        cut = len(body) > self.max_bytes
        text = body[: self.max_bytes].decode("utf-8", errors="replace")
        head = f"HTTP {status}" + (f" ({ctype})" if ctype else "")
        if location:
            head += f"; redirect to {location} (not followed)"
        tail = f"\n[body cut at {self.max_bytes} bytes]" if cut else ""
        return f"{head}\n{text}{tail}"

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"sqrt": math.sqrt, "log": math.log, "exp": math.exp, "abs": abs, "round": round,
          "min": min, "max": max}
_NAMES = {"pi": math.pi, "e": math.e}


@register
class Calculator(ExternalTool):
    """Evaluates an arithmetic expression (numbers, + - * / // % **, a few functions)."""

    name = "calculator"
    description = ("Evaluate an arithmetic expression, e.g. '2**10 + sqrt(16)'. Operators "
                   "+ - * / // % **; functions sqrt, log, exp, abs, round, min, max; pi, e.")
    parameters = {"type": "object",
                  "properties": {"expression": {"type": "string"}},
                  "required": ["expression"]}
    default_timeout = 5.0

    async def run(self, arguments: dict[str, Any]) -> str:
        expr = arguments.get("expression")
        if not isinstance(expr, str) or not expr.strip() or len(expr) > 1000:
            raise ToolFailure("Argument 'expression' must be a non-empty string (at most 1000 "
                              "characters).")
        try:
            value = _eval(ast.parse(expr, mode="eval").body)
        except ToolFailure:
            raise
        except (SyntaxError, ZeroDivisionError, ValueError, OverflowError, TypeError) as e:
            raise ToolFailure(f"Cannot evaluate {expr!r}: {type(e).__name__}: {e}") from None
        return repr(value)


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 10_000:
            raise ToolFailure("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise ToolFailure(f"not allowed in an expression: {ast.dump(node)[:60]}")
