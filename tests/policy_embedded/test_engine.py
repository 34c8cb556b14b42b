"""BatchedEngine in-process: batch limit and FIFO queueing, context clamp, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from rollout.policy.embedded.engine import BatchedEngine
from rollout.policy.embedded.sampling import InvalidRequest, SamplingParams

from .conftest import chat_ids, teacher_forced_logprobs


@pytest.fixture
async def small_engine(reference):
    engine = BatchedEngine(reference, max_batch_size=2, max_context=64)
    await engine.start()
    yield engine
    await engine.stop()


async def test_requests_beyond_the_batch_limit_queue_and_all_complete(small_engine, reference):
    prompts = [chat_ids(reference.tokenizer, q) for q in ("hi", "hello", "hey", "yo")]
    results = await asyncio.gather(
        *[small_engine.generate(p, SamplingParams(max_tokens=5, ignore_eos=True, seed=i)) for i, p in enumerate(prompts)]
    )
    assert small_engine.max_batch_seen == 2
    for prompt, result in zip(prompts, results):
        assert len(result.token_ids) == 5 and result.finish_reason == "length"
        expected = teacher_forced_logprobs(reference, prompt, result.token_ids, 1.0)
        assert max(abs(a - b) for a, b in zip(result.logprobs, expected)) < 1e-3


async def test_max_tokens_is_clamped_to_the_context(small_engine, reference):
    prompt = chat_ids(reference.tokenizer, "hi")  # 31 tokens of a 64-token context
    result = await small_engine.generate(prompt, SamplingParams(max_tokens=500, ignore_eos=True))
    assert result.finish_reason == "length"
    assert len(prompt) + len(result.token_ids) == 64
    with pytest.raises(InvalidRequest, match="context"):
        await small_engine.generate([1] * 64, SamplingParams(max_tokens=1))


async def test_cancelled_request_leaves_the_batch(small_engine, reference):
    prompt = chat_ids(reference.tokenizer, "hi")
    task = asyncio.create_task(small_engine.generate(prompt, SamplingParams(max_tokens=30, ignore_eos=True)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while small_engine.active == 0:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while small_engine.active:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    # The engine keeps serving afterwards.
    result = await small_engine.generate(prompt, SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(result.token_ids) == 3
