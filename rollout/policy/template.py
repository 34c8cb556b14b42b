"""Chat-template rendering for token-exact conversations.

The prompt is rendered and tokenized once. After that, nothing already in a trajectory is
re-rendered or re-tokenized: sampled ids are appended as the server returned them, and each
batch of tool results is appended as the *suffix* the chat template puts after an assistant
turn (the end-of-turn marker, the tool-response block, the next generation prompt).

The suffix is found by rendering the history with a sentinel assistant message followed by
the tool messages, and taking the text after the sentinel. That text depends only on what
follows the assistant turn, which avoids templates (Qwen3's among them) that render the last
assistant message differently from earlier ones.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SENTINEL = "\u2063ROLLOUT-SENTINEL-7f3a\u2063"


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str, chat_template: str | None = None) -> Any:
    """Load a Hugging Face tokenizer offline (a local dir or an already-cached hub name)."""
    cls = _named_class(name_or_path)
    if cls is None:
        from transformers import AutoTokenizer as cls
    try:
        tok = cls.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Cannot load tokenizer {name_or_path!r} offline: {exc}. "
            "Set policy.tokenizer to a local directory holding tokenizer.json/tokenizer_config.json."
        ) from exc
    if chat_template:
        path = Path(chat_template)
        tok.chat_template = path.read_text() if path.is_file() else chat_template
    if not tok.chat_template:
        raise ValueError(
            f"Tokenizer {name_or_path!r} has no chat template; set policy.chat_template "
            "(a Jinja file or string)."
        )
    return tok


def _named_class(name_or_path: str) -> Any:
    """The tokenizer class a local directory's `tokenizer_config.json` names, taken from
    `transformers` directly; None where `AutoTokenizer` has more to decide (remote code, no
    class named, a name transformers does not export). It is the class `AutoTokenizer` picks
    for such a directory, without `AutoTokenizer`'s import of the model configs, which
    imports torch: a worker that only renders and counts tokens starts in half the CPU time
    and never holds torch in memory."""
    try:
        config = json.loads((Path(name_or_path) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("tokenizer_class") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name.isidentifier() or config.get("auto_map"):
        return None
    import transformers

    cls = getattr(transformers, name, None)
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase):
        return cls
    return None


class ChatRenderer:
    """Turns chat messages into token ids with one tokenizer's chat template."""

    def __init__(self, tokenizer: Any, template_kwargs: dict[str, Any] | None = None,
                 tool_prompt: str = "hermes") -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        if tool_prompt not in TOOL_PROMPTS:
            raise ValueError(f"unknown tool_prompt {tool_prompt!r}; one of {sorted(TOOL_PROMPTS)}")
        self.tool_prompt = tool_prompt
        self._added = set(tokenizer.get_added_vocab().values())
        self.turn_end_id = self._find_turn_end_id()
        stops = {self.turn_end_id, tokenizer.eos_token_id}
        self.stop_ids: frozenset[int] = frozenset(i for i in stops if i is not None)
        self.template_renders_tools = self._renders_tools()
        if not self.template_renders_tools:
            log.info("the chat template ignores tools; describing them in the system message")

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        add_generation_prompt: bool,
    ) -> str:
        if tools and not self.template_renders_tools:
            messages, tools = TOOL_PROMPTS[self.tool_prompt](messages, tools), None
        return self._apply(messages, tools, add_generation_prompt)

    def _apply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        return self.encode(self.render(messages, tools, add_generation_prompt=True))

    def assistant_text(self, sampled_ids: list[int]) -> str:
        """The message content of a sampled turn: its text without the end-of-turn token."""
        ids = sampled_ids[:-1] if sampled_ids and sampled_ids[-1] in self.stop_ids else sampled_ids
        return self.decode(ids)

    def tool_suffix_ids(
        self,
        history: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_messages: list[dict[str, Any]],
        sampled_ids: list[int],
    ) -> list[int]:
        """Token ids the template adds after an assistant turn for these tool messages.

        If the turn already ended with the end-of-turn token (the model sampled it), that
        part of the suffix is not repeated.
        """
        text = self._text_after_assistant(history, tools, tool_messages)
        if sampled_ids and sampled_ids[-1] in self.stop_ids:
            done = self.decode(sampled_ids[-1:])
            if text.startswith(done):
                text = text[len(done):]
        return self.encode(text)

    def turn_closing_ids(self) -> list[int]:
        """What a template-built assistant turn ends with (the end-of-turn token)."""
        return [self.turn_end_id] if self.turn_end_id is not None else []

    # --- internals -------------------------------------------------------------------------

    def _text_after_assistant(
        self,
        history: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_messages: list[dict[str, Any]],
    ) -> str:
        probe = [*history, {"role": "assistant", "content": _SENTINEL}, *tool_messages]
        text = self.render(probe, tools, add_generation_prompt=True)
        at = text.rfind(_SENTINEL)
        if at < 0:
            raise ValueError("the chat template dropped the assistant message; cannot add tool results")
        return text[at + len(_SENTINEL):]

    def _renders_tools(self) -> bool:
        """Whether the template shows tool schemas to the model (many small models' don't)."""
        probe_tool = {"type": "function", "function": {
            "name": "probe_tool_5e1d", "description": "probe",
            "parameters": {"type": "object", "properties": {}}}}
        try:
            text = self._apply([{"role": "user", "content": "hi"}], [probe_tool], True)
        except Exception:  # a template that rejects tools does not render them
            return False
        return "probe_tool_5e1d" in text

    def _find_turn_end_id(self) -> int | None:
        """The special token that closes an assistant turn (e.g. <|im_end|>), if any."""
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = self.render(probe, None, add_generation_prompt=False)
        except Exception:  # a template may reject this probe; fall back to eos
            log.debug("could not probe the chat template for its end-of-turn token", exc_info=True)
            return self.tokenizer.eos_token_id
        after = text[text.rfind(_SENTINEL) + len(_SENTINEL):]
        ids = self.encode(after) if after else []
        if ids and ids[0] in self._added:
            return ids[0]
        return self.tokenizer.eos_token_id


def with_tool_instructions(messages: list[dict[str, Any]],
                           tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Describe the tools and the Hermes call format in the system message.

    For chat templates that ignore `tools=`: without this the model never learns it has tools.
    The result is a pure function of its inputs, so every re-render of a history agrees.
    """
    schemas = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
    block = (
        "You can call these tools (JSON schemas):\n<tools>\n" + schemas + "\n</tools>\n"
        "To call a tool, reply with one block per call:\n"
        '<tool_call>\n{"name": "<tool name>", "arguments": {<arguments as JSON>}}\n</tool_call>\n'
        "Each result comes back in a message from the tool."
    )
    return _with_system_block(messages, block)


def with_smollm2_tool_instructions(messages: list[dict[str, Any]],
                                   tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools for SmolLM2-135M-Instruct: the schemas as one JSON list inside `<tools>` and calls
    as a JSON list inside one `<tool_call>` block (the format of the APIGen function-calling
    data its larger siblings were tuned on; the 135M model's own tuning set has no function
    calling), then one worked example as real chat turns before the task's first user
    message: a small bug fixed by calls only, closed by a summary without a call.

    Why the example: with tool descriptions alone (either format) the 135M model answers the
    issue in prose on every first turn; with the worked example it mostly opens with a call
    (tests/bench/bench_embedded_toolcalls.py; the README quotes the shares). The example's
    turns are prompt tokens (masked), never trained on. Pure function of its inputs, like
    `with_tool_instructions`, so every re-render of a history agrees.
    """
    out = _with_system_block(messages, smollm2_tool_block(tools))
    at = 1 if out and out[0].get("role") == "system" else 0
    return out[:at] + smollm2_example_turns(tools) + out[at:]


def smollm2_tool_block(tools: list[dict[str, Any]]) -> str:
    functions = [t.get("function", t) if isinstance(t, dict) else t for t in tools]
    return (
        "You have access to these tools:\n<tools>" + json.dumps(functions) + "</tools>\n"
        "To use tools, answer with a JSON list of calls inside <tool_call></tool_call>, "
        "exactly in this format:\n"
        '<tool_call>[{"name": "tool_name", "arguments": {"argument_name": "value"}}]</tool_call>\n'
        "Each result comes back in a message from the tool. When the work is done, answer "
        "without a tool call."
    )


def smollm2_example_turns(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A worked example as chat turns: a bug fix with the file tools when the task offers
    them, else one call of the first offered tool."""
    names = [(t.get("function", t) or {}).get("name") for t in tools if isinstance(t, dict)]
    if {"terminal", "read_file", "write_file"} <= set(names):
        return [
            {"role": "user", "content": "<issue>\n`add(2, 3)` returns -1 instead of 5.\n"
                                        "</issue>\n\nFix this issue by editing the code."},
            _list_call("terminal", command="grep -rn 'def add' ."),
            {"role": "tool", "content": "./calc.py:1:def add(a, b):"},
            _list_call("read_file", path="calc.py"),
            {"role": "tool", "content": "def add(a, b):\n    return a - b\n"},
            _list_call("write_file", path="calc.py", content="def add(a, b):\n    return a + b\n"),
            {"role": "tool", "content": "wrote 32 bytes to calc.py"},
            {"role": "assistant", "content": "Fixed: `add` subtracted; it now adds."},
        ]
    first = next((t.get("function", t) for t in tools if isinstance(t, dict)), {}) or {}
    name = first.get("name", "tool_name")
    required = (first.get("parameters") or {}).get("required") or []
    return [
        {"role": "user", "content": f"Use the {name} tool once."},
        _list_call(name, **{k: "..." for k in required}),
        {"role": "tool", "content": "(its result)"},
        {"role": "assistant", "content": f"I called {name} and read its result."},
    ]


def _list_call(name: str, **arguments: Any) -> dict[str, Any]:
    call = json.dumps([{"name": name, "arguments": arguments}])
    return {"role": "assistant", "content": f"<tool_call>{call}</tool_call>"}


def _with_system_block(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{block}"
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


# How tools are described to a model whose chat template ignores `tools=` (policy.tool_prompt).
TOOL_PROMPTS = {"hermes": with_tool_instructions, "smollm2": with_smollm2_tool_instructions}
