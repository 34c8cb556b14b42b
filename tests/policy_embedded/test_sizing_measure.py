"""Timing the real embedded server (SmolLM2 on CPU), as launch.py does before a run."""

from __future__ import annotations

from rollout.policy.embedded.sizing import measure, trajectory_limit

from .conftest import get


async def test_measure_times_real_generations_alone_and_batched(base_url):
    before = await get(base_url, "/health")
    # A huge timeout: a turn alone fits, so the full batch is measured too.
    tp = await measure(base_url, batch=2, max_tokens=16, llm_timeout=1e6, tokens=4)
    after = await get(base_url, "/health")
    assert tp.batch == 2 and tp.step_alone > 0
    assert tp.step_full is not None and tp.step_full >= tp.step_alone
    # Real decode steps ran: 3 for the 4 tokens alone (the first comes from the prefill), at
    # least 3 more for the batch, which really decoded two sequences together.
    assert after["steps"] - before["steps"] >= 6
    assert after["max_batch_seen"] >= 2
    assert trajectory_limit(tp, max_tokens=16, llm_timeout=1e6) > 2


async def test_a_turn_that_cannot_fit_skips_the_batch_and_gets_one(base_url):
    # 1e-3 s of timeout: no real turn fits, so one trajectory and no batch measured.
    tp = await measure(base_url, batch=2, max_tokens=16, llm_timeout=1e-3, tokens=2)
    assert tp.step_full is None
    assert trajectory_limit(tp, max_tokens=16, llm_timeout=1e-3) == 1
