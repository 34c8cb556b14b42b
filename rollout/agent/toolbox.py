"""The agent's tool loop routes each call by its tool's schema: one `ToolExecutor` per
trajectory over three kinds of tools.

- in the slot: the env's own executor (terminal, read_file, write_file, python, ...);
- `tmux`: the interactive terminal, also in the slot (rollout/agent/tmux_tool.py);
- external (the schema says `"external": true`): sent to the tool server
  (rollout/toolserver/), never run in the slot, so a tool's secret is never where the model's
  commands run. The server's URL is `agent.tool_server_url`; its token is read from the
  environment variable `agent.tool_server_token_env` of this process (never from the config,
  which is written to the run dir).

Tools besides the env's are named by `agent.tools` (for every task) or a task's own `tools`
list (a terminal task's `environment/tools`). With recording on (the run records events),
the plain terminal's commands and outputs and the tmux screens become asciinema casts
(rollout/record/casts.py), handed to the trajectory's trace at the end.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import aiohttp

from rollout.record.casts import Cast
from rollout.agent.tmux_tool import HEIGHT, TMUX_SCHEMA, WIDTH, TmuxArgumentError, TmuxSession
from rollout.toolserver.registry import external_schema, is_external, known
from rollout.types import SandboxError, ToolCall, ToolLimits, ToolResult

log = logging.getLogger(__name__)

TMUX = "tmux"
DEFAULT_TOKEN_ENV = "ROLLOUT_TOOL_SERVER_TOKEN"
TMUX_WAIT_DEFAULT = 10.0  # seconds a send waits for the screen at most, unless told


def extra_tool_schemas(names: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """Schemas of tools named beside an env's own: `tmux`, or a registered external tool.
    Raises ValueError naming the known ones for anything else."""
    out = []
    for name in names:
        if name == TMUX:
            out.append(dict(TMUX_SCHEMA))
        elif (schema := external_schema(name)) is not None:
            out.append(schema)
        else:
            raise ValueError(f"unknown tool {name!r}; extra tools: {', '.join([TMUX, *known()])}")
    return out


def external_names(names: list[str] | tuple[str, ...]) -> list[str]:
    return [n for n in names if external_schema(n) is not None]


def with_extra_tools(schemas: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    have = {s["function"]["name"] for s in schemas}
    return schemas + extra_tool_schemas([n for n in dict.fromkeys(names) if n not in have])


class ToolServerClient:
    """Calls of one trajectory to the external tool server."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http: aiohttp.ClientSession | None = None

    async def call(self, call: ToolCall, timeout: float) -> ToolResult:
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers)
        try:
            async with self._http.post(f"{self.url}/call", json={
                    "name": call.name, "arguments": call.arguments},
                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    raise SandboxError(f"tool server answered {r.status} for {call.name}")
                body = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            # The server is infrastructure: its failure is never the model's observation.
            raise SandboxError(f"tool server unreachable for {call.name}: "
                               f"{type(e).__name__}") from None
        return ToolResult(call.call_id, call.name, str(body.get("content", "")),
                          bool(body.get("is_error")))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


class Toolbox:
    """A `ToolExecutor` that routes by schema (see the module doc)."""

    def __init__(self, local: Any, sandbox: Any, limits: ToolLimits,
                 schemas: list[dict[str, Any]], *, server_url: str | None = None,
                 token_env: str = DEFAULT_TOKEN_ENV, record: bool = False) -> None:
        self.local, self.limits = local, limits
        names = {s["function"]["name"]: s for s in schemas
                 if isinstance(s, dict) and isinstance(s.get("function"), dict)}
        self.external = {n for n, s in names.items() if is_external(s)}
        self.record = record
        self.shell_cast = Cast(title="terminal") if record else None
        self.tmux_cast = Cast(WIDTH, HEIGHT, title="tmux") if record else None
        self.tmux = TmuxSession(sandbox, limits, self.tmux_cast) if TMUX in names else None
        self.client: ToolServerClient | None = None
        if self.external:
            if not server_url:
                raise ValueError(f"external tools {sorted(self.external)} need "
                                 "agent.tool_server_url (or tool_server.launch=true)")
            self.client = ToolServerClient(server_url, os.environ.get(token_env, ""))

    async def run(self, call: ToolCall, *, max_timeout: float | None = None) -> ToolResult:
        if call.name in self.external and self.client is not None:
            timeout = self.limits.timeout_max if max_timeout is None else max_timeout
            result = await self.client.call(call, timeout)
            result.content = _clip(result.content, self.limits.max_observation_chars)
            return result
        if call.name == TMUX and self.tmux is not None:
            return await self._tmux(call, max_timeout)
        started = time.monotonic()
        result = await self.local.run(call, max_timeout=max_timeout)
        if self.shell_cast is not None and call.name == "terminal":
            command = call.arguments.get("command")
            if isinstance(command, str):
                self.shell_cast.output("$ " + command.replace("\n", "\r\n") + "\r\n", started)
                self.shell_cast.output(_crlf(result.content) + "\r\n")
        return result

    async def _tmux(self, call: ToolCall, max_timeout: float | None) -> ToolResult:
        assert self.tmux is not None
        args = call.arguments
        try:
            timeout = args.get("timeout", TMUX_WAIT_DEFAULT)
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise TmuxArgumentError("Argument 'timeout' must be a number.")
            timeout = min(max(float(timeout), 0.1), self.limits.timeout_max)
            if max_timeout is not None:
                timeout = max(min(timeout, max_timeout - 5.0), 0.1)
            action = args.get("action")
            if action == "start":
                content = await self.tmux.start(timeout)
            elif action == "send":
                keys = args.get("keys")
                if isinstance(keys, str):
                    keys = [keys]
                if not isinstance(keys, list) or not keys:
                    raise TmuxArgumentError("action=send needs 'keys': a list of key names "
                                            "and text, e.g. [\"ls\", \"Enter\"].")
                wait = args.get("wait", "settle")
                if wait not in ("settle", "prompt", "none"):
                    raise TmuxArgumentError("'wait' must be settle, prompt or none.")
                until = args.get("until")
                if until is not None and (not isinstance(until, str) or "\n" in until):
                    raise TmuxArgumentError("'until' must be text of one line.")
                content = await self.tmux.send(keys, wait, timeout, until or None)
            elif action == "capture":
                content = await self.tmux.capture(timeout)
            elif action == "stop":
                content = await self.tmux.stop()
            else:
                raise TmuxArgumentError("'action' must be start, send, capture or stop.")
        except TmuxArgumentError as e:
            return ToolResult(call.call_id, call.name, f"Error: {e}", is_error=True)
        return ToolResult(call.call_id, call.name,
                          _clip(content, self.limits.max_observation_chars))

    def casts(self) -> dict[str, str]:
        """The recordings made (kind -> cast text); a kind never used is left out."""
        out = {}
        for kind, cast in (("shell", self.shell_cast), ("tmux", self.tmux_cast)):
            if cast is not None and cast.events:
                out[kind] = cast.to_text()
        return out

    async def close(self) -> None:
        """End the trajectory's tools: the terminal closes (the slot's reset would kill it
        anyway; grading should not run beside a live editor), the server client too."""
        if self.tmux is not None and self.tmux.started:
            try:
                await self.tmux.stop()
            except Exception as e:  # a dead slot: its reset cleans up
                log.debug("closing the terminal failed: %s", e)
        if self.client is not None:
            await self.client.close()


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _clip(text: str, limit: int) -> str:
    from rollout.agent.tools import truncate_middle

    return truncate_middle(text, limit)
