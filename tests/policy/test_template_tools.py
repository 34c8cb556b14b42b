"""Chat templates that ignore `tools=` still tell the model about its tools."""

from rollout.policy.template import ChatRenderer, load_tokenizer
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
