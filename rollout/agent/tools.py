"""The agent's tools, executed in the trajectory's own slot through the `Sandbox` protocol.

- `terminal`: one `sh -c` command in the workspace; its timeout is clamped to the configured
  range. Stateless, or with `persistent_shell` one shell session per trajectory: the working
  directory and exported variables carry over (rollout/agent/shell_state.py).
- `read_file`: a workspace file, optionally a line range, capped in bytes.
- `write_file`: create or overwrite a workspace file.
- `python` (offered by envs that ask for it, `PYTHON_SCHEMA`): code run in the slot's
  stateful Python session; names persist between calls of the trajectory.

A failing command, a missing file or a bad argument is an observation for the model
(`ToolResult.is_error`). Only `SandboxError` (the slot itself is gone) propagates: the agent
ends the trajectory on it. Every observation is truncated to `max_observation_chars` with a
visible marker, so one `cat` of a huge file cannot fill the context.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from rollout.protocols import Sandbox, ToolExecutor  # noqa: F401  (re-exported: rollout.agent.loop)
from rollout.agent.shell_state import NOT_KEPT, ShellSession
from rollout.types import SandboxError, ToolCall, ToolLimits, ToolResult

log = logging.getLogger(__name__)

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "terminal",
            "description": (
                "Run one shell command in the repository workspace (a fresh `sh -c` each "
                "time: no state carries over between calls; use `cd dir && ...`)."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command."},
                    "timeout": {"type": "number", "description": "Seconds before it is killed."},
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the workspace, optionally only some lines.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."},
                    "start_line": {"type": "integer", "description": "First line (1-based)."},
                    "end_line": {"type": "integer", "description": "Last line (inclusive)."},
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Create or overwrite a file of the workspace with the given content.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace."},
                    "content": {"type": "string", "description": "The full new content."},
                },
                "required": ["path", "content"],
            },
        },
    },
]

TOOL_NAMES = frozenset(s["function"]["name"] for s in TOOL_SCHEMAS)

PERSISTENT_TERMINAL = (
    "Run a shell command in the repository workspace. Like one terminal session: the "
    "working directory (`cd`) and exported variables carry over to the next call; "
    "background processes end with the call."
)


def describe_tools(schemas: list[dict[str, Any]], limits: ToolLimits) -> list[dict[str, Any]]:
    """`schemas` as the model should see them under `limits` (the terminal's description
    says whether its state carries over; the `external` routing mark is left out). `schemas` itself is never changed: it comes back
    as it is when nothing differs, else as a new list."""
    if not limits.persistent_shell and not any(isinstance(s, dict) and "external" in s
                                               for s in schemas):
        return schemas
    out = []
    for schema in schemas:
        if isinstance(schema, dict) and "external" in schema:  # routing only: not the model's
            schema = {k: v for k, v in schema.items() if k != "external"}
        fn = schema.get("function") if isinstance(schema, dict) else None
        if isinstance(fn, dict) and fn.get("name") == "terminal":
            schema = {**schema, "function": {**fn, "description": PERSISTENT_TERMINAL}}
        out.append(schema)
    return out

PYTHON_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "python",
        "description": (
            "Run Python code in a persistent session (variables, imports and functions stay "
            "defined between calls). Prints are shown; the value of a final expression is "
            "shown as its repr."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The Python code to run."},
                "timeout": {"type": "number", "description": "Seconds before it is killed."},
            },
            "required": ["code"],
        },
    },
}


class ToolArgumentError(ValueError):
    """A tool's arguments are unusable; the message is shown to the model."""


class SandboxTools:
    """The built-in tools over one `Sandbox`, for one trajectory. Stateless between calls,
    except the terminal's session under `limits.persistent_shell`."""

    def __init__(self, sandbox: Sandbox, limits: ToolLimits = ToolLimits(),
                 names: frozenset[str] = TOOL_NAMES) -> None:
        """`names`: the tools offered (any of terminal, read_file, write_file, python)."""
        self.sandbox = sandbox
        self.limits = limits
        handlers = {
            "terminal": self._terminal,
            "read_file": self._read_file,
            "write_file": self._write_file,
            "python": self._python,
        }
        self._handlers = {n: h for n, h in handlers.items() if n in names}
        self._shell = ShellSession() if limits.persistent_shell else None

    async def run(self, call: ToolCall, *, max_timeout: float | None = None) -> ToolResult:
        handler = self._handlers.get(call.name)
        if handler is None:
            names = ", ".join(sorted(self._handlers))
            return self._error(call, f"Unknown tool '{call.name}'. Available tools: {names}.")
        try:
            content = await handler(call.arguments, max_timeout)
        except ToolArgumentError as exc:
            return self._error(call, str(exc))
        except SandboxError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            return self._error(call, f"{type(exc).__name__}: {exc}")
        except ValueError as exc:  # the slot server refused the request (bad path, too big)
            return self._error(call, str(exc))
        return ToolResult(call.call_id, call.name, self._clip(content))

    # --- tools -----------------------------------------------------------------------------

    def _timeout(self, args: dict[str, Any], max_timeout: float | None) -> float:
        timeout = _optional(args, "timeout", (int, float))
        timeout = self.limits.timeout_default if timeout is None else float(timeout)
        timeout = min(max(timeout, self.limits.timeout_min), self.limits.timeout_max)
        if max_timeout is not None:
            timeout = max(min(timeout, max_timeout), 0.001)
        return timeout

    async def _terminal(self, args: dict[str, Any], max_timeout: float | None) -> str:
        command = _arg(args, "command", str)
        timeout = self._timeout(args, max_timeout)
        kept = True
        if self._shell is None:
            result = await self.sandbox.exec(command, timeout=timeout)
            stderr = result.stderr
        else:
            result = await self.sandbox.exec(self._shell.script(command), timeout=timeout)
            stderr, kept = self._shell.absorb(result.stderr)
        parts = [result.stdout]
        if stderr:
            parts.append(stderr)
        out = "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)
        if result.truncated:
            out += "[output truncated by the sandbox]\n"
        if not kept:
            out += NOT_KEPT + "\n"
        if result.timed_out:
            out += f"[command killed: timed out after {timeout:g}s]"
        else:
            out += f"[exit code: {result.exit_code}]"
        return out

    async def _python(self, args: dict[str, Any], max_timeout: float | None) -> str:
        code = _arg(args, "code", str)
        timeout = self._timeout(args, max_timeout)
        run = getattr(self.sandbox, "python", None)
        if run is None:
            raise ToolArgumentError("this sandbox has no Python session; use the terminal tool")
        r = await run(code, timeout=timeout)
        parts = [p if p.endswith("\n") else p + "\n" for p in (r.stdout, r.stderr) if p]
        if r.error:
            parts.append(r.error if r.error.endswith("\n") else r.error + "\n")
        if r.result is not None:
            parts.append(r.result + "\n")
        if r.session_lost:
            parts.append(f"[{r.message}]\n")
        return "".join(parts) or "[no output]\n"

    async def _read_file(self, args: dict[str, Any], max_timeout: float | None) -> str:
        path = self._path(_arg(args, "path", str))
        start = _optional(args, "start_line", int)
        end = _optional(args, "end_line", int)
        data = await self.sandbox.read_file(path, max_bytes=self.limits.max_read_bytes)
        text = data.decode("utf-8", errors="replace")
        if start is None and end is None:
            return text
        lines = text.splitlines(keepends=True)
        lo = max(1, start or 1)
        hi = len(lines) if end is None else min(end, len(lines))
        if lo > hi:
            raise ToolArgumentError(
                f"Line range {lo}-{hi} is empty; '{path}' has {len(lines)} lines."
            )
        return "".join(lines[lo - 1 : hi])

    async def _write_file(self, args: dict[str, Any], max_timeout: float | None) -> str:
        path = self._path(_arg(args, "path", str))
        content = _arg(args, "content", str)
        data = content.encode("utf-8", errors="replace")
        await self.sandbox.write_file(path, data)
        return f"Wrote {len(data)} bytes to {path}."

    # --- helpers ---------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        """Normalise a model-given path to a workspace-relative one, or refuse it."""
        if "\x00" in path or not path.strip():
            raise ToolArgumentError("'path' must be a non-empty file path.")
        root = (self.limits.workspace_root or "").rstrip("/")
        if root and path == root:
            path = "."
        elif root and path.startswith(root + "/"):
            path = path[len(root) + 1 :]
        if path.startswith("/"):
            where = f" (or absolute under {root}/)" if root else ""
            raise ToolArgumentError(
                f"Path '{path}' is outside the workspace; use a path relative to it{where}."
            )
        norm = posixpath.normpath(path)
        if norm == ".." or norm.startswith("../"):
            raise ToolArgumentError(f"Path '{path}' leaves the workspace; stay inside it.")
        return norm

    def _clip(self, text: str) -> str:
        return truncate_middle(text, self.limits.max_observation_chars)

    def _error(self, call: ToolCall, message: str) -> ToolResult:
        return ToolResult(call.call_id, call.name, self._clip(f"Error: {message}"), is_error=True)


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail (errors tend to be at the end) with a marker between."""
    if len(text) <= max_chars:
        return text
    marker_room = 64
    keep = max(max_chars - marker_room, 0)
    head, tail = keep // 2, keep - keep // 2
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters truncated ...]\n{text[len(text) - tail:]}"


def _arg(args: dict[str, Any], key: str, kind: type) -> Any:
    if key not in args:
        raise ToolArgumentError(f"Missing required argument '{key}'.")
    value = args[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ToolArgumentError(
            f"Argument '{key}' must be a {kind.__name__}, got {type(value).__name__}."
        )
    return value


def _optional(args: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ToolArgumentError(f"Argument '{key}' must be a {names}, got {type(value).__name__}.")
    return value


def tool_names(schemas: list[dict[str, Any]]) -> frozenset[str]:
    """The names of OpenAI-style tool schemas (what the tool-call parser accepts)."""
    return frozenset(s["function"]["name"] for s in schemas
                     if isinstance(s, dict) and isinstance(s.get("function"), dict))
