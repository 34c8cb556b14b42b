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


def _kv(n: int, layers: int = 2):
    import torch

    return [(torch.arange(n, dtype=torch.float).view(1, 1, n, 1).clone(),) * 2 for _ in range(layers)]


def test_prefix_cache_is_bounded_and_prefers_the_longest_match():
    from rollout.policy.embedded.prefix_cache import PrefixCache

    cache = PrefixCache(max_tokens=100, min_match=4)
    cache.put(list(range(30)), _kv(30))
    cache.put(list(range(40)), _kv(40))  # extends the first: the first is dropped
    assert cache.tokens == 40
    n, kv = cache.longest_prefix(list(range(35)) + [999])
    assert n == 35 and kv[0][0].shape[2] == 35  # cropped to the shared prefix
    n, _ = cache.longest_prefix(list(range(40)))
    assert n == 39  # at least one prompt token is left to prefill
    assert cache.longest_prefix([7, 8, 9, 10, 11]) == (0, None)
    cache.put([500 + i for i in range(50)], _kv(50))
    cache.put([900 + i for i in range(50)], _kv(50))  # over budget: least recent goes
    assert cache.tokens <= 100
    assert cache.longest_prefix(list(range(20)))[0] == 0
    assert cache.longest_prefix([900 + i for i in range(10)])[0] == 9
