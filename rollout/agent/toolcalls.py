"""Tool-call parsing: model text -> ToolCalls and errors.

Accepted inside `<tool_call>...</tool_call>` tags (several per message):
- Hermes JSON: `{"name": "terminal", "arguments": {"command": "ls"}}`
  (`arguments` may also be a JSON-encoded string, as some servers emit it);
- a JSON list of such objects, one call each (`[{"name": ...}, {"name": ...}]`): the APIGen
  function-calling format of SmolLM2-1.7B-Instruct's tuning data, which the embedded policy's
  `smollm2` tool prompt asks for; `[]` is no call;
- GLM / llama.cpp style: `terminal{"command": "ls"}` (name, then a JSON object);
- GLM-4.5 style: `terminal\n<arg_key>command</arg_key>\n<arg_value>ls</arg_value>`.

Nothing here raises on bad input: every problem becomes a `ToolCallError` whose message is
written for the model (what was wrong, what a valid call looks like), and the agent sends it
back as an observation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from rollout.types import ToolCall

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

_BLOCK = re.compile(re.escape(OPEN_TAG) + r"(.*?)" + re.escape(CLOSE_TAG), re.DOTALL)
_NAME_THEN_JSON = re.compile(r"^([A-Za-z_][\w.\-]*)\s*(\{.*\})\s*$", re.DOTALL)
_NAME_THEN_ARGS = re.compile(r"^([A-Za-z_][\w.\-]*)\s*(<arg_key>.*)$", re.DOTALL)
_ARG_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)

EXAMPLE = '<tool_call>\n{"name": "terminal", "arguments": {"command": "ls"}}\n</tool_call>'


@dataclass
class ToolCallError:
    """A call the model attempted that cannot be executed; `message` is shown to the model."""

    message: str
    name: str = ""
    call_id: str = ""


@dataclass
class ParsedTurn:
    """Calls and errors of one assistant turn, in the order the model wrote them."""

    entries: list[ToolCall | ToolCallError] = field(default_factory=list)

    @property
    def calls(self) -> list[ToolCall]:
        return [e for e in self.entries if isinstance(e, ToolCall)]

    @property
    def errors(self) -> list[ToolCallError]:
        return [e for e in self.entries if isinstance(e, ToolCallError)]

    @property
    def attempted(self) -> bool:
        """Whether the model tried to call a tool at all (valid or not)."""
        return bool(self.entries)


@dataclass(frozen=True)
class ParseLimits:
    max_calls: int = 8
    max_argument_bytes: int = 100_000
    known_tools: frozenset[str] | None = None  # None: accept any name


def parse_tool_calls(text: str, limits: ParseLimits = ParseLimits()) -> ParsedTurn:
    """Parse every tool call in an assistant message. Never raises."""
    raw: list[tuple[str, Any] | ToolCallError] = []
    for match in _BLOCK.finditer(text):
        raw.extend(_parse_block(match.group(1)))
    tail = text[_last_block_end(text):]
    if OPEN_TAG in tail:
        raw.append(ToolCallError(
            f"Your last tool call was cut off: {OPEN_TAG} without a closing {CLOSE_TAG}. "
            "Send the complete call again."
        ))
    return _finish(raw, limits)


def format_hermes_call(call: ToolCall) -> str:
    """Render a call the way Hermes-style chat templates (Qwen, Hermes) do."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


# --- internals -----------------------------------------------------------------------------


def _last_block_end(text: str) -> int:
    end = 0
    for match in _BLOCK.finditer(text):
        end = match.end()
    return end


def _parse_block(body: str) -> list[tuple[str, Any] | ToolCallError]:
    """The calls of one `<tool_call>` block: one, or one per item of a JSON list."""
    body = body.strip()
    if not body:
        return [ToolCallError(f"Empty tool call. A valid call looks like:\n{EXAMPLE}")]
    if body[0] in "{[":
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as exc:
            return [ToolCallError(
                f"Tool call is not valid JSON ({_json_problem(exc)}). "
                f"A valid call looks like:\n{EXAMPLE}"
            )]
        items = obj if isinstance(obj, list) else [obj]
        return [_call_object(item) for item in items]
    if m := _NAME_THEN_JSON.match(body):
        return [_named_arguments(m.group(1), m.group(2))]
    if m := _NAME_THEN_ARGS.match(body):
        args: dict[str, Any] = {}
        for key, value in _ARG_PAIR.findall(m.group(2)):
            args[key.strip()] = _loose_value(value.strip())
        return [(m.group(1), args)]
    return [ToolCallError(
        f"Could not read this tool call: {body[:80]!r}. A valid call looks like:\n{EXAMPLE}"
    )]


def _call_object(obj: Any) -> tuple[str, Any] | ToolCallError:
    if not isinstance(obj, dict):
        return ToolCallError(f"Tool call must be a JSON object. Example:\n{EXAMPLE}")
    args = obj.get("arguments", obj.get("parameters", {}))
    return _named_arguments(obj.get("name"), args)


def _named_arguments(name: Any, args: Any) -> tuple[str, Any] | ToolCallError:
    if not isinstance(name, str) or not name.strip():
        return ToolCallError(
            f"Tool call has no 'name' string. A valid call looks like:\n{EXAMPLE}"
        )
    name = name.strip()
    if args is None:
        args = {}
    if isinstance(args, str):
        text = args.strip() or "{}"
        try:
            args = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            return ToolCallError(
                f"Arguments of '{name}' are not valid JSON ({_json_problem(exc)}).", name=name
            )
    if not isinstance(args, dict):
        return ToolCallError(
            f"Arguments of '{name}' must be a JSON object, got {type(args).__name__}.", name=name
        )
    return name, args


def _finish(raw: list[tuple[str, Any] | ToolCallError], limits: ParseLimits) -> ParsedTurn:
    turn = ParsedTurn()
    accepted = 0
    for i, item in enumerate(raw):
        call_id = f"call_{i}"
        if isinstance(item, ToolCallError):
            item.call_id = call_id
            turn.entries.append(item)
            continue
        name, args = item
        if accepted >= limits.max_calls:
            turn.entries.append(ToolCallError(
                f"Too many tool calls in one message (limit {limits.max_calls}); "
                f"'{name}' was not run. Send it again in your next message.",
                name=name, call_id=call_id,
            ))
            continue
        if limits.known_tools is not None and name not in limits.known_tools:
            available = ", ".join(sorted(limits.known_tools))
            turn.entries.append(ToolCallError(
                f"Unknown tool '{name[:64]}'. Available tools: {available}.",
                name=name, call_id=call_id,
            ))
            continue
        size = _argument_bytes(args)
        if size > limits.max_argument_bytes:
            turn.entries.append(ToolCallError(
                f"Arguments of '{name}' are {size} bytes, over the limit of "
                f"{limits.max_argument_bytes}. Split the work into smaller calls.",
                name=name, call_id=call_id,
            ))
            continue
        accepted += 1
        turn.entries.append(ToolCall(name=name, arguments=args, call_id=call_id))
    return turn


def _argument_bytes(args: dict[str, Any]) -> int:
    try:
        return len(json.dumps(args, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        return 1 << 62


def _loose_value(text: str) -> Any:
    """GLM argument values are raw strings unless they parse as JSON (numbers, objects)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at position {exc.pos}"
    return "nested too deeply"
