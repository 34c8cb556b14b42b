"""Token exactness: a multi-turn trajectory's tokens are the prompt, every sampled id and every
observation suffix, in order; masks and logprobs align; decoding reproduces the conversation.

Runs against the in-test vLLM/SGLang-shaped server (real Qwen3 tokenizer), or against any
completions server named by ROLLOUT_TEST_COMPLETIONS_URL (+ ROLLOUT_TEST_TOKENIZER).
"""

import pytest
from atroposlib.api.server import ScoredData

from rollout.agent.loop import AgentConfig, run_agent
from rollout.policy import PolicyConfig, make_policy
from rollout.scored import ScoredGroup
from rollout.agent.tools import TOOL_SCHEMAS
from rollout.types import Outcome, Task
from tests.agent_support import DirSandbox
from tests.policy.conftest import EXTERNAL_URL, TOKENIZER

MESSAGES = [
    {"role": "system", "content": "You fix bugs. Use the tools."},
    {"role": "user", "content": "List the files, then say done."},
]
TASK = Task("t-exact", "test", "list files")


async def run_recorded(policy, sandbox, cfg):
    """Run the agent while recording every request's prompt and the parsed reply."""
    calls = []
    generate = policy.generate

    async def recording(conv, max_tokens):
        prompt = conv.token_ids()
        gen = await generate(conv, max_tokens)
        calls.append((prompt, gen))
        return gen

    policy.generate = recording
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
    traj = await run_agent(conv, sandbox, cfg, trajectory_id="tr-0", task_id=TASK.task_id)
    return traj, calls


def check_exact(traj, calls, tokenizer):
    rec = traj.record
    render = lambda msgs: tokenizer.apply_chat_template(  # noqa: E731
        msgs, tools=TOOL_SCHEMAS, tokenize=False, add_generation_prompt=True)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    # masks and logprobs align 1:1 with tokens; masked positions carry -100 / 1.0
    assert len(rec.tokens) == len(rec.masks) == len(rec.logprobs)
    for tok, mask, lp in zip(rec.tokens, rec.masks, rec.logprobs):
        assert mask in (-100, tok)
        if mask == -100:
            assert lp == 1.0

    # the first prompt is the rendered opening messages, tokenized once
    assert calls[0][0] == encode(render(MESSAGES))
    assistant_at = [i for i, m in enumerate(rec.messages) if m["role"] == "assistant"]
    assert len(assistant_at) == len(calls) == traj.turns

    for k, (prompt, gen) in enumerate(calls):
        # each request's prompt is exactly the record so far (nothing re-tokenized) ...
        assert rec.tokens[: len(prompt)] == prompt
        # ... and decodes to the chat template's rendering of the conversation so far
        assert tokenizer.decode(prompt) == render(rec.messages[: assistant_at[k]])
        # the sampled ids follow verbatim, trained (mask = id) with the server's logprobs
        span = slice(len(prompt), len(prompt) + len(gen.token_ids))
        assert rec.tokens[span] == gen.token_ids
        assert rec.masks[span] == gen.token_ids
        assert rec.logprobs[span] == pytest.approx(gen.logprobs)
        # then the observation suffix, untrained, up to the next request's prompt
        end = len(calls[k + 1][0]) if k + 1 < len(calls) else len(rec.tokens)
        assert all(m == -100 for m in rec.masks[span.stop : end])
        if k + 1 < len(calls):
            assert end > span.stop  # there was an observation

    # the whole record decodes to the conversation: ending on observations, it is the
    # template's rendering; ending on a sampled turn, the last prompt plus that turn verbatim
    # (Qwen3's template would re-render a final assistant turn with an empty think block).
    if rec.messages[-1]["role"] == "tool":
        assert tokenizer.decode(rec.tokens) == render(rec.messages)
    else:
        last_prompt, last_gen = calls[-1]
        assert tokenizer.decode(rec.tokens) == tokenizer.decode(last_prompt) + tokenizer.decode(last_gen.token_ids)


@pytest.mark.parametrize("kind", ["openai_completions", "sglang"])
async def test_multi_turn_trajectory_is_token_exact(kind, fake_server, tokenizer, tmp_path):
    if EXTERNAL_URL and kind == "sglang":
        pytest.fail("ROLLOUT_TEST_COMPLETIONS_URL is for a completions server; run -k openai_completions")
    url = EXTERNAL_URL or fake_server.url
    # a real model on CPU is slow: shorter turns, longer timeout
    max_tokens = 48 if EXTERNAL_URL else 256
    policy = make_policy(PolicyConfig(type=kind, base_url=url, tokenizer=TOKENIZER, max_tokens=max_tokens, seed=1))
    cfg = AgentConfig(max_turns=4 if EXTERNAL_URL else 8, max_context_tokens=8192, llm_timeout=280)
    try:
        traj, calls = await run_recorded(policy, DirSandbox(tmp_path), cfg)
    finally:
        await policy.close()
    assert traj.error is None, traj.error
    check_exact(traj, calls, tokenizer)
    if EXTERNAL_URL:
        return

    # against the in-test server we also know exactly what was sampled and what ran
    assert traj.outcome == Outcome.DONE and traj.turns == 4
    served = fake_server.exchanges
    assert [gen.token_ids for _, gen in calls] == [e.token_ids for e in served]
    assert [gen.logprobs for _, gen in calls] == [e.logprobs for e in served]
    tool_outputs = [m["content"] for m in traj.record.messages if m["role"] == "tool"]
    assert tool_outputs == ["hello\n[exit code: 0]", "a\nb\n[exit code: 0]", "[exit code: 0]"]
    # The served tool calls were tokenized one character at a time: re-tokenizing the decoded
    # text gives different ids, so only a client that keeps the ids can pass the checks above.
    text = tokenizer.decode(traj.record.tokens)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != traj.record.tokens

    group = ScoredGroup(TASK, [traj], generation_params=policy.generation_params())
    sent = ScoredData(**group.to_atropos(include_messages=True))
    assert sent.tokens[0] == traj.record.tokens and sent.masks[0] == traj.record.masks
    assert sent.inference_logprobs[0] == traj.record.logprobs
    assert sent.group_overrides["inference_logprobs_available"] is True


async def test_truncated_turn_at_the_context_limit_stays_exact(fake_server, tokenizer, tmp_path):
    policy = make_policy(PolicyConfig(base_url=fake_server.url, tokenizer=TOKENIZER, max_tokens=256))
    prompt_len = len(policy.open(MESSAGES, TOOL_SCHEMAS, TASK).token_ids())
    # room for the first tool turn and its observation, then a cut-off turn
    cfg = AgentConfig(max_turns=8, max_context_tokens=prompt_len + 140, min_turn_tokens=1)
    try:
        traj, calls = await run_recorded(policy, DirSandbox(tmp_path), cfg)
    finally:
        await policy.close()
    assert traj.outcome == Outcome.CONTEXT_FULL, (traj.outcome, traj.error)
    assert calls[-1][1].finish_reason == "length"
    assert len(traj.record.tokens) <= cfg.max_context_tokens + 200  # last observation may overshoot
    check_exact(traj, calls, tokenizer)
