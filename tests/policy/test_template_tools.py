"""Chat templates that ignore `tools=` still tell the model about its tools."""

import json

import pytest

from rollout.policy.template import ChatRenderer, load_tokenizer, with_smollm2_tool_instructions
from rollout.toolcalls import ParseLimits, parse_tool_calls
from rollout.tools import TOOL_SCHEMAS
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


def test_smollm2_tool_prompt_lists_tools_and_shows_a_call_the_parser_runs():
    renderer = ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML), tool_prompt="smollm2")
    text = renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nFix the bug.")
    listed = json.loads(system.split("<tools>")[1].split("</tools>")[0])
    assert [t["name"] for t in listed] == [s["function"]["name"] for s in TOOL_SCHEMAS]
    # The worked example is itself a call the agent would run.
    example = system.split("For example:\n")[1].split("\n")[0]
    turn = parse_tool_calls(example, ParseLimits(known_tools=frozenset({"terminal"})))
    assert [(c.name, c.arguments) for c in turn.calls] == [("terminal", {"command": "ls"})]
    assert text == renderer.render(MESSAGES, TOOL_SCHEMAS, add_generation_prompt=True)


def test_smollm2_example_uses_an_offered_tool_when_there_is_no_terminal():
    tools = [{"type": "function", "function": {"name": "python", "description": "run code",
              "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                             "required": ["code"]}}}]
    system = with_smollm2_tool_instructions([], tools)[0]["content"]
    example = system.split("For example:\n")[1].split("\n")[0]
    assert parse_tool_calls(example, ParseLimits(known_tools=frozenset({"python"}))).calls[0].name == "python"


def test_unknown_tool_prompt_is_refused():
    with pytest.raises(ValueError, match="unknown tool_prompt 'nope'"):
        ChatRenderer(load_tokenizer(qwen_tokenizer_dir(), CHATML), tool_prompt="nope")
