import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.agent.toolcalls import (
    ParseLimits,
    ToolCallError,
    format_hermes_call,
    parse_tool_calls,
)
from rollout.types import ToolCall

KNOWN = ParseLimits(known_tools=frozenset({"terminal", "read_file", "write_file"}))


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def test_no_call_is_not_an_attempt():
    turn = parse_tool_calls("I am done. The fix is in place.", KNOWN)
    assert not turn.attempted and turn.calls == [] and turn.errors == []


def test_single_hermes_call():
    turn = parse_tool_calls("Let me look.\n" + call("terminal", command="ls -la"), KNOWN)
    assert [(c.name, c.arguments) for c in turn.calls] == [("terminal", {"command": "ls -la"})]
    assert turn.calls[0].call_id == "call_0"


def test_several_calls_keep_their_order():
    text = call("write_file", path="a.py", content="x = 1\n") + "\n" + call("terminal", command="python a.py")
    turn = parse_tool_calls(text, KNOWN)
    assert [c.name for c in turn.calls] == ["write_file", "terminal"]
    assert [c.call_id for c in turn.calls] == ["call_0", "call_1"]


def test_arguments_as_json_string_and_parameters_alias():
    text = ('<tool_call>{"name": "terminal", "arguments": "{\\"command\\": \\"pwd\\"}"}</tool_call>'
            '<tool_call>{"name": "terminal", "parameters": {"command": "id"}}</tool_call>')
    turn = parse_tool_calls(text, KNOWN)
    assert [c.arguments for c in turn.calls] == [{"command": "pwd"}, {"command": "id"}]


def test_glm_llamacpp_name_then_json():
    turn = parse_tool_calls('<tool_call>terminal{"command": "git status"}</tool_call>', KNOWN)
    assert turn.calls == [ToolCall("terminal", {"command": "git status"}, "call_0")]
    turn = parse_tool_calls('<tool_call>read_file\n{"path": "x.py"}\n</tool_call>', KNOWN)
    assert turn.calls[0].arguments == {"path": "x.py"}


def test_glm45_arg_key_value_pairs():
    text = ("<tool_call>read_file\n<arg_key>path</arg_key>\n<arg_value>src/a.py</arg_value>\n"
            "<arg_key>start_line</arg_key>\n<arg_value>3</arg_value>\n</tool_call>")
    turn = parse_tool_calls(text, KNOWN)
    assert turn.calls[0].arguments == {"path": "src/a.py", "start_line": 3}


def test_truncated_call_is_reported():
    turn = parse_tool_calls(call("terminal", command="ls") + '\n<tool_call>\n{"name": "termi', KNOWN)
    assert len(turn.calls) == 1
    assert "cut off" in turn.errors[0].message


def test_non_json_and_wrong_types():
    cases = {
        "<tool_call>{'name': 'terminal'}</tool_call>": "not valid JSON",
        "<tool_call>[1]</tool_call>": "must be a JSON object",
        '<tool_call>{"name": 7, "arguments": {}}</tool_call>': "no 'name'",
        '<tool_call>{"name": "terminal", "arguments": [1]}</tool_call>': "must be a JSON object, got list",
        "<tool_call>   </tool_call>": "Empty tool call",
        "<tool_call>just some words</tool_call>": "Could not read",
    }
    for text, expected in cases.items():
        turn = parse_tool_calls(text, KNOWN)
        assert turn.calls == [], text
        assert len(turn.errors) == 1 and expected in turn.errors[0].message, (text, turn.errors)
        assert "<tool_call>" in turn.errors[0].message or "'" in turn.errors[0].message


def test_a_json_list_in_one_block_is_one_call_per_item():
    # SmolLM2-Instruct's tuned format: a list of calls inside one block.
    text = ('<tool_call>[{"name": "terminal", "arguments": {"command": "ls"}}, '
            '{"name": "read_file", "arguments": {"path": "a.py"}}, 3, '
            '{"name": "nope", "arguments": {}}]</tool_call>')
    turn = parse_tool_calls(text, KNOWN)
    assert [(c.name, c.arguments, c.call_id) for c in turn.calls] == [
        ("terminal", {"command": "ls"}, "call_0"), ("read_file", {"path": "a.py"}, "call_1")]
    assert [(e.call_id, e.message.split(".")[0]) for e in turn.errors] == [
        ("call_2", "Tool call must be a JSON object"), ("call_3", "Unknown tool 'nope'")]
    # The per-turn cap counts the list's items.
    capped = parse_tool_calls(text, ParseLimits(max_calls=1, known_tools=KNOWN.known_tools))
    assert len(capped.calls) == 1 and "Too many tool calls" in capped.errors[0].message


def test_an_empty_list_is_no_call():
    turn = parse_tool_calls("Done.\n<tool_call>[]</tool_call>", KNOWN)
    assert not turn.attempted


def test_unknown_tool_names_the_available_ones():
    turn = parse_tool_calls(call("rm_rf", path="/"), KNOWN)
    assert "Unknown tool 'rm_rf'" in turn.errors[0].message
    assert "terminal" in turn.errors[0].message


def test_oversized_arguments_are_refused():
    limits = ParseLimits(max_argument_bytes=1000, known_tools=KNOWN.known_tools)
    turn = parse_tool_calls(call("write_file", path="a", content="x" * 5000), limits)
    assert turn.calls == [] and "over the limit of 1000" in turn.errors[0].message


def test_calls_over_the_per_turn_cap_are_refused_not_dropped():
    limits = ParseLimits(max_calls=2, known_tools=KNOWN.known_tools)
    turn = parse_tool_calls("".join(call("terminal", command=f"echo {i}") for i in range(4)), limits)
    assert [c.arguments["command"] for c in turn.calls] == ["echo 0", "echo 1"]
    assert len(turn.errors) == 2 and all("Too many tool calls" in e.message for e in turn.errors)


def test_format_hermes_call_round_trips():
    original = ToolCall("write_file", {"path": "ü.txt", "content": "a\n\"b\"\n</tool_call>?"})
    turn = parse_tool_calls(format_hermes_call(original), KNOWN)
    # A literal closing tag inside an argument ends the block early: reported, not crashed.
    assert turn.attempted
    plain = ToolCall("terminal", {"command": "echo 'x' && ls"})
    assert parse_tool_calls(format_hermes_call(plain), KNOWN).calls[0].arguments == plain.arguments


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_fragments = st.sampled_from(["<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"arguments"',
                              "terminal", "<arg_key>", "</arg_value>", "\n", ",", "[", "\\"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), _fragments), max_size=30))
def test_fuzz_random_text_never_raises(parts):
    turn = parse_tool_calls("".join(parts), KNOWN)
    for entry in turn.entries:
        assert isinstance(entry, (ToolCall, ToolCallError))
        if isinstance(entry, ToolCall):
            assert isinstance(entry.arguments, dict) and entry.name in KNOWN.known_tools


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12), _json)
def test_fuzz_structured_calls_never_raise(name, args):
    text = "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"
    parse_tool_calls(text, KNOWN)
    parse_tool_calls(f"<tool_call>{name}{json.dumps(args)}</tool_call>", KNOWN)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=4))
def test_fuzz_well_formed_calls_parse_back_exactly(args):
    turn = parse_tool_calls(format_hermes_call(ToolCall("terminal", args)), KNOWN)
    if "</tool_call>" not in json.dumps(args, ensure_ascii=False):
        assert turn.calls and turn.calls[0].arguments == args
