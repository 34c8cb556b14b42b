"""Policy clients: retries, errors, secrets, the chat client, config validation."""

import asyncio
import logging

import pytest

from rollout.agent.loop import AgentConfig, run_agent
from rollout.settings.config import ConfigError
from rollout.policy import PolicyConfig, make_policy
from rollout.policy.completions import parse_completion
from rollout.policy.sglang import parse_generate
from rollout.agent.tools import TOOL_SCHEMAS
from rollout.types import Outcome, PolicyError, Task
from tests.agent_support import QWEN_TOKENIZER, DirSandbox

MESSAGES = [{"role": "user", "content": "hi"}]
TASK = Task("t", "test", "x")


def completions(url, **kw):
    return make_policy(PolicyConfig(base_url=url, tokenizer=QWEN_TOKENIZER, **kw))


async def test_retries_5xx_then_succeeds(fake_server):
    fake_server.fail_statuses = [503, 502]
    policy = completions(fake_server.url, max_retries=3)
    policy.http.backoff = 0.01
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        completion = await conv.sample(timeout=30)
    finally:
        await policy.close()
    assert fake_server.requests == 3 and completion.token_ids == fake_server.exchanges[0].token_ids


async def test_4xx_is_not_retried_and_leaves_the_record_untouched(fake_server):
    fake_server.fail_statuses = [400]
    policy = completions(fake_server.url, max_retries=3)
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        before = conv.record()
        with pytest.raises(PolicyError, match="HTTP 400"):
            await conv.sample(timeout=30)
    finally:
        await policy.close()
    assert fake_server.requests == 1 and conv.record() == before


def retry_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "retry_attempt")]


async def test_transient_failures_stop_at_max_retries_with_the_configured_backoff(fake_server, caplog):
    fake_server.fail_statuses = [503] * 10
    policy = completions(fake_server.url, max_retries=2)
    policy.http.backoff = 0.02
    caplog.set_level(logging.WARNING, logger="rollout.policy.http")
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        with pytest.raises(PolicyError, match="failed after 3 attempts: HTTP 503"):
            await conv.sample(timeout=30)
    finally:
        await policy.close()
    assert fake_server.requests == 3  # the first try and max_retries=2 retries
    retries = retry_records(caplog)
    assert [r.retry_attempt for r in retries] == [1, 2]
    # Retry n waits backoff * 2**(n-1) plus a jitter of at most backoff.
    for r in retries:
        low = 0.02 * 2 ** (r.retry_attempt - 1)
        assert low <= r.retry_wait <= low + 0.02, (r.retry_attempt, r.retry_wait)


async def test_connection_refused_is_transient(unused_tcp_port, caplog):
    policy = completions(f"http://127.0.0.1:{unused_tcp_port}", max_retries=1)
    policy.http.backoff = 0.01
    caplog.set_level(logging.WARNING, logger="rollout.policy.http")
    try:
        with pytest.raises(PolicyError, match="failed after 2 attempts"):
            await policy.open(MESSAGES, TOOL_SCHEMAS, TASK).sample(timeout=30)
    finally:
        await policy.close()
    assert [r.retry_attempt for r in retry_records(caplog)] == [1]


async def test_a_cancelled_caller_stops_retrying(fake_server, caplog):
    fake_server.fail_statuses = [503] * 10
    policy = completions(fake_server.url, max_retries=5)
    policy.http.backoff = 60.0  # the first retry waits at least a minute
    caplog.set_level(logging.WARNING, logger="rollout.policy.http")
    try:
        sample = asyncio.create_task(policy.open(MESSAGES, TOOL_SCHEMAS, TASK).sample(timeout=600))
        while not retry_records(caplog):  # logged just before the wait begins
            assert not sample.done(), sample
            await asyncio.sleep(0.01)
        sample.cancel()
        done, _ = await asyncio.wait({sample}, timeout=30)  # a hang guard, not a timing
        assert sample in done and sample.cancelled()
    finally:
        await policy.close()
    assert fake_server.requests == 1 and len(retry_records(caplog)) == 1


async def test_api_key_is_sent_but_never_logged_or_repr(fake_server, monkeypatch, caplog):
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("ROLLOUT_TEST_KEY", secret)
    cfg = PolicyConfig(base_url=fake_server.url, tokenizer=QWEN_TOKENIZER, api_key_env="ROLLOUT_TEST_KEY")
    policy = make_policy(cfg)
    policy.http.backoff = 0.01
    fake_server.fail_statuses = [500]  # a retry gets logged
    caplog.set_level(logging.DEBUG)
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        await conv.sample(timeout=30)
    finally:
        await policy.close()
    assert fake_server.auth_headers == [f"Bearer {secret}"] * 2
    assert "retry 1" in caplog.text
    for text in (caplog.text, repr(policy.http), repr(cfg), repr(conv.record())):
        assert secret not in text


def test_missing_api_key_env_is_a_clear_config_error(monkeypatch):
    monkeypatch.delenv("ROLLOUT_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="ROLLOUT_NO_SUCH_KEY"):
        make_policy(PolicyConfig(base_url="http://x", tokenizer=QWEN_TOKENIZER, api_key_env="ROLLOUT_NO_SUCH_KEY"))


@pytest.mark.parametrize("fields, message", [
    ({"type": "vllm", "tokenizer": QWEN_TOKENIZER}, r"policy.type must be 'openai_completions'"),
    ({"type": "sglang", "tokenizer": QWEN_TOKENIZER}, "policy.base_url is needed by policy.type=sglang"),
    ({"type": "scripted"}, "policy.tokenizer is empty"),
    ({"type": "scripted", "tokenizer": QWEN_TOKENIZER, "max_tokens": 0}, "policy.max_tokens must be > 0"),
    ({"type": "scripted", "tokenizer": QWEN_TOKENIZER, "max_retries": "3"},
     "policy.max_retries must be an integer, got '3'"),
])
def test_bad_config_is_refused_when_built(fields, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(**fields)


@pytest.mark.parametrize("cfg, message", [
    (PolicyConfig(type="scripted", tokenizer="/nonexistent/tok"), "offline"),
    (PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER), "task environment"),
])
def test_unusable_config_is_refused_clearly(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_policy(cfg)


@pytest.mark.parametrize("reply, message", [
    ({}, "no choices"),
    ({"choices": [{"text": "x", "finish_reason": "stop"}]}, "neither token_ids"),
    ({"choices": [{"logprobs": {"tokens": ["hello"], "token_logprobs": [-1.0]}}]}, "token_id:<n>"),
    ({"choices": [{"token_ids": [1, 2], "logprobs": {"token_logprobs": [-1.0]}}]}, "2 token ids but 1"),
    ({"choices": [{"token_ids": [1], "logprobs": None}]}, "no logprobs"),
])
def test_malformed_completions_replies_are_policy_errors(reply, message):
    with pytest.raises(PolicyError, match=message):
        parse_completion(reply)


def test_completions_reply_without_token_ids_uses_token_id_strings():
    gen = parse_completion({"choices": [{"logprobs": {
        "tokens": ["token_id:5", "token_id:151645"], "token_logprobs": [-0.5, None]}}]})
    assert gen.token_ids == [5, 151645] and gen.logprobs == [-0.5, 0.0]


def test_malformed_sglang_replies_are_policy_errors():
    with pytest.raises(PolicyError, match="meta_info"):
        parse_generate({"text": "x"})
    with pytest.raises(PolicyError, match="disagree"):
        parse_generate({"output_ids": [1], "meta_info": {"output_token_logprobs": [[-1.0, 2, None]]}})


async def test_chat_client_runs_the_same_loop_with_logprobs_marked_unavailable(fake_server, tokenizer, tmp_path):
    policy = make_policy(PolicyConfig(type="openai_chat", base_url=fake_server.url, tokenizer=QWEN_TOKENIZER))
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        traj = await run_agent(conv, DirSandbox(tmp_path), AgentConfig(), trajectory_id="tr", task_id="t")
    finally:
        await policy.close()
    assert traj.outcome == Outcome.DONE and traj.turns == 4, traj.error
    rec = traj.record
    assert not rec.logprobs_available
    assert len(rec.tokens) == len(rec.masks) == len(rec.logprobs)
    obs = [m["content"] for m in rec.messages if m["role"] == "tool"]
    assert obs == ["hello\n[exit code: 0]", "a\nb\n[exit code: 0]", "[exit code: 0]"]
    # the endpoint saw structured tool calls whose ids match the tool messages it got back
    last = fake_server.exchanges[-1].request["messages"]
    call_ids = [c["id"] for m in last if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    result_ids = [m["tool_call_id"] for m in last if m["role"] == "tool"]
    assert call_ids == result_ids == ["call_0", "call_0", "call_0"]
    # tokens rebuilt from the template: ending on a sampled turn, the record decodes to the
    # rendered conversation up to the last prompt plus that turn
    head = tokenizer.apply_chat_template(rec.messages[:-1], tools=TOOL_SCHEMAS, tokenize=False,
                                         add_generation_prompt=True)
    assert tokenizer.decode(rec.tokens) == head + rec.messages[-1]["content"] + "<|im_end|>"


async def test_request_timeout_is_a_policy_error_not_a_hang(fake_server):
    fake_server.delay = 30
    policy = completions(fake_server.url, request_timeout=0.3)
    try:
        conv = policy.open(MESSAGES, TOOL_SCHEMAS, TASK)
        with pytest.raises(PolicyError, match="request_timeout=0.3s"):
            await conv.sample(timeout=60)
    finally:
        await policy.close()
    assert fake_server.requests == 1


async def test_seeded_trajectories_of_a_group_get_different_seeds(fake_server):
    policy = completions(fake_server.url, seed=7)
    try:
        convs = [policy.open(MESSAGES, TOOL_SCHEMAS, TASK) for _ in range(3)]
        for conv in convs:
            await conv.sample(timeout=30)
    finally:
        await policy.close()
    seeds = [x.request["seed"] for x in fake_server.exchanges]
    assert len(set(seeds)) == 3  # identical seeds would make the group's samples identical
    again = completions(fake_server.url, seed=7)
    assert [again.turn_seed(again.open(MESSAGES, TOOL_SCHEMAS, TASK)) for _ in range(3)] == seeds
