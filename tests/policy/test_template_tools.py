"""Chat templates that ignore `tools=` still tell the model about its tools."""

import json

import pytest

from rollout.policy.template import ChatRenderer, load_tokenizer, with_smollm2_tool_instructions
from rollout.agent.toolcalls import ParseLimits, parse_tool_calls
from rollout.agent.tools import TOOL_SCHEMAS
from tests.launch_config import qwen_tokenizer_dir

# A plain ChatML template, like SmolLM2's: it renders roles and content, never tools.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Fix the bug."}, {"role": "user", "content": "go"}]


def test_tools_described_in_the_system_message_when_the_template_ignores_them():
    renderer = ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML))
    assert renderer.template_renders_tools is False
    text = renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nFix the bug.")
    for tool in ("terminal", "read_file", "write_file"):
        assert f'"name": "{tool}"' in system
    assert "<tool_call>" in system
    # Deterministic: re-rendering the same history gives the same text (token exactness).
    assert text == renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)


def test_templates_that_render_tools_are_left_alone():
    renderer = ChatRenderer(load_tokenizer(qwen_tokenizer_dir()))
    assert renderer.template_renders_tools is True
    text = renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)
    assert text.count('"name": "terminal"') == 1


def test_smollm2_tool_prompt_lists_tools_and_works_an_example_the_parser_runs():
    renderer = ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML), tool_prompt="smollm2")
    text = renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nFix the bug.")
    listed = json.loads(system.split("<tools>")[1].split("</tools>")[0])
    assert [t["name"] for t in listed] == [s["function"]["name"] for s in TOOL_SCHEMAS]
    # The worked example comes before the task's own user message, which stays last.
    messages = with_smollm2_tool_instructions(MESSAGES, TOOL_SCHEMAS)
    assert messages[-1] == MESSAGES[-1] and messages[1]["role"] == "user"
    example = [m["content"] for m in messages[1:-1] if m["role"] == "assistant"]
    known = ParseLimits(known_tools=frozenset(s["function"]["name"] for s in TOOL_SCHEMAS))
    calls = [parse_tool_calls(c, known) for c in example]
    assert [[c.name for c in t.calls] for t in calls] == [["terminal"], ["read_file"], ["write_file"], []]
    assert not any(t.errors for t in calls)
    assert text == renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)


def test_smollm2_example_uses_an_offered_tool_without_the_file_tools():
    tools = [{"type": "function", "function": {"name": "python", "description": "run code",
              "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                             "required": ["code"]}}}]
    messages = with_smollm2_tool_instructions([{"role": "user", "content": "2+2?"}], tools)
    assert messages[0]["role"] == "system" and messages[-1]["content"] == "2+2?"
    call = next(m["content"] for m in messages if m["role"] == "assistant")
    turn = parse_tool_calls(call, ParseLimits(known_tools=frozenset({"python"})))
    assert [(c.name, c.arguments) for c in turn.calls] == [("python", {"code": "..."})]


def test_tool_results_after_a_smollm2_prompt_are_a_suffix_of_the_history():
    # Token exactness holds with the example turns in the prompt: the suffix for a tool result
    # is what a full re-render adds after the sampled turn.
    renderer = ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML), tool_prompt="smollm2")
    sampled = '<tool_call>[{"name": "terminal", "arguments": {"command": "ls"}}]</tool_call>'
    tool = [{"role": "tool", "content": "a.py", "tool_call_id": "call_0"}]
    prompt = renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)
    ids = renderer.encode(sampled) + renderer.turn_closing_ids()
    suffix = renderer.tool_suffix_ids(MESSAGES, TOOL_SCHEMAS, tool, ids)
    full = renderer.render([*MESSAGES, {"role": "assistant", "content": sampled}, *tool],
                           TOOL_SCHEMAS, add_generation_prompt=True)
    assert renderer.decode(renderer.encode(prompt) + ids + suffix) == full


def test_unknown_tool_prompt_is_refused():
    with pytest.raises(ValueError, match="unknown tool_prompt 'nope'"):
        ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML), tool_prompt="nope")
