"""How many trajectories the embedded server can serve at once: measured, not guessed.

A CPU model's speed depends on the machine and on what else runs on it, so launch.py times a
short real generation on the server it started (`measure`) and bounds the trajectories in
flight with `trajectory_limit`, so that one turn (`policy.max_tokens` tokens) finishes well
inside `agent.llm_timeout` even when every trajectory in flight asks for a turn at once.

The model of the server (rollout/policy/embedded/engine.py): up to `batch` sequences decode
together, one token each per step; the rest wait in FIFO order. A step over c sequences takes
about `s(c)`, measured at c=1 and c=batch and interpolated linearly between (a CPU step is
mostly weight reads, shared by the batch, so it grows with c well below c-fold). With C
trajectories asking at once, the last one's turn ends after

    waves(C) x max_tokens x s(min(C, batch)),   waves(C) = ceil(C / batch)

seconds. The limit is the largest C for which that stays within `TURN_SHARE` of the timeout.
The measured steps include a short prompt's prefill; real prompts are longer (the prefix
cache keeps most of them) and the sandboxes' commands share the CPU, which is what the rest
of the timeout is for. Trajectories also spend time in tool calls, so fewer than C of them
generate at any moment: the bound errs on the safe side.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

# One turn at the measured speed may take this share of llm_timeout: "well inside" it.
TURN_SHARE = 0.25
# No bound is needed past this many (the run's own workers x groups x group_size decide).
MAX_LIMIT = 4096


@dataclass(frozen=True)
class Throughput:
    """Seconds per decode step of the embedded server, alone and with a full batch."""

    batch: int  # the server's max batch size
    step_alone: float  # seconds per token of one sequence decoding alone
    step_full: float | None  # seconds per step with `batch` sequences (None: not measured)

    def step(self, concurrent: int) -> float:
        """Seconds per step with `concurrent` sequences decoding together (<= batch)."""
        if self.step_full is None or self.batch <= 1 or concurrent <= 1:
            return self.step_alone
        c = min(concurrent, self.batch)
        return self.step_alone + (self.step_full - self.step_alone) * (c - 1) / (self.batch - 1)

    def turn_seconds(self, concurrent: int, max_tokens: int) -> float:
        """Seconds until the last of `concurrent` turns of `max_tokens` tokens each is done."""
        waves = math.ceil(concurrent / self.batch)
        return waves * max_tokens * self.step(concurrent)

    @property
    def tokens_per_s(self) -> float:
        """One sequence alone."""
        return 1.0 / self.step_alone

    @property
    def batch_tokens_per_s(self) -> float | None:
        """All sequences of a full batch together."""
        return None if self.step_full is None else self.batch / self.step_full


def trajectory_limit(tp: Throughput, *, max_tokens: int, llm_timeout: float,
                     share: float = TURN_SHARE) -> int:
    """The most trajectories in flight whose turns all finish within `share x llm_timeout`
    (at least 1: a turn that cannot fit even alone is the caller's to warn about)."""
    budget = share * llm_timeout
    if tp.turn_seconds(1, max_tokens) > budget:
        return 1
    # turn_seconds grows with C (more waves, slower steps), so the first C that fails ends it.
    limit = 1
    while limit < MAX_LIMIT and tp.turn_seconds(limit + 1, max_tokens) <= budget:
        limit += 1
    return limit


def needs_full_batch(tp_alone: Throughput, *, max_tokens: int, llm_timeout: float,
                     share: float = TURN_SHARE) -> bool:
    """Whether measuring a full batch can change the limit (not when one turn alone
    already does not fit: the limit is 1 whatever a batch does)."""
    return tp_alone.batch > 1 and tp_alone.turn_seconds(1, max_tokens) <= share * llm_timeout


# --- the measurement -----------------------------------------------------------------------

PROMPT_TOKENS = 32  # ordinary ids; the content does not matter for the speed
MEASURE_TOKENS = 8  # decode steps per measurement: a few seconds even on a loaded 2-core box


async def _generate(session: aiohttp.ClientSession, url: str, tokens: int, seed: int) -> None:
    body = {"prompt": list(range(1000, 1000 + PROMPT_TOKENS)), "max_tokens": tokens,
            "ignore_eos": True, "temperature": 1.0, "seed": seed}
    async with session.post(url + "/v1/completions", json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"the embedded server refused the measurement: {data}")


async def _timed(session: aiohttp.ClientSession, url: str, concurrent: int, tokens: int) -> float:
    started = time.monotonic()
    await asyncio.gather(*(_generate(session, url, tokens, seed=i) for i in range(concurrent)))
    return time.monotonic() - started


async def measure(base_url: str, *, batch: int, max_tokens: int, llm_timeout: float,
                  tokens: int = MEASURE_TOKENS, timeout: float = 600.0) -> Throughput:
    """Time real generations on the server at `base_url`: one warm-up token, `tokens` tokens
    alone, then (only if it can matter) `tokens` tokens each for a full batch. Each step time
    includes its share of the short prompt's prefill, so it errs on the slow side."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        await _timed(session, base_url, 1, 1)  # first forward pass: lazy init, cold caches
        alone = Throughput(batch=batch, step_alone=await _timed(session, base_url, 1, tokens) / tokens,
                           step_full=None)
        if not needs_full_batch(alone, max_tokens=max_tokens, llm_timeout=llm_timeout):
            return alone
        full = await _timed(session, base_url, batch, tokens) / tokens
        # Never faster per step than alone (noise on an idle box could say so).
        return Throughput(batch=batch, step_alone=alone.step_alone,
                          step_full=max(full, alone.step_alone))


def describe(tp: Throughput, *, limit: int, max_tokens: int, llm_timeout: float) -> str:
    """One log line: what was measured and what it means."""
    rate = f"{tp.tokens_per_s:.1f} tokens/s alone"
    if tp.batch_tokens_per_s is not None:
        rate += f", {tp.batch_tokens_per_s:.1f} tokens/s with {tp.batch} in a batch"
    turn = tp.turn_seconds(limit, max_tokens)
    return (f"embedded policy: {rate}; with {limit} in flight a {max_tokens}-token "
            f"turn takes at most ~{turn:.0f}s of the {llm_timeout:g}s llm_timeout")


def sized_workers(workers: Any, *, group_size: int, limit: int) -> tuple[Any, str]:
    """The `workers` config bounded to `limit` trajectories in flight, and what was done (in
    words). An explicit `workers.trajectories_in_flight` is kept; a run whose workers x groups
    x group_size already fits is left alone; otherwise the bound is set, with `num` lowered to
    it when needed (every worker runs at least one trajectory)."""
    if workers.trajectories_in_flight is not None:
        return workers, (f"workers.trajectories_in_flight={workers.trajectories_in_flight} "
                         f"was set: kept (the measured limit is {limit})")
    natural = workers.num * workers.groups_in_flight * group_size
    if natural <= limit:
        return workers, f"the run's {natural} trajectories in flight fit: no bound set"
    num = min(workers.num, limit)
    note = f" (workers.num {workers.num} -> {num})" if num != workers.num else ""
    return (workers.replace(num=num, trajectories_in_flight=limit),
            f"workers.trajectories_in_flight={limit} instead of {natural}{note}")
