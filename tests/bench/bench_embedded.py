"""Benchmark: embedded policy throughput through its HTTP server at batch 1, 4 and 8.

Run on demand: `python tests/bench/bench_embedded.py [--tokens 64] [--rounds 2] [--smoke]`
(smoke: 2 tokens per request, one round, a 64-token history; it still starts its own server,
which loads the model). tests/policy_embedded/test_bench_embedded.py runs `run()` at smoke
sizes against the suite's shared server instead, so the suite loads no extra model.
Starts a real server subprocess, sends chat prompts as token ids (ignore_eos so every
request produces exactly --tokens tokens) and prints, per batch size, generated tokens per
wall second and per server CPU second (robust when other jobs share the cores), each with its
ratio to batch 1, all measured in this one run (batch sizes interleaved per round); then the
latency of an agent's next turn over a long history, cold vs from the prefix cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.policy.embedded import EmbeddedServerProcess, ensure_checkpoint  # noqa: E402

QUESTIONS = [
    "Explain what a hash map is.",
    "Write a haiku about the sea.",
    "List three uses of Python decorators.",
    "How do I reverse a linked list?",
    "What is the boiling point of water?",
    "Describe a cat in two sentences.",
    "Why is the sky blue?",
    "Give me a tip for writing tests.",
]


async def one(session: aiohttp.ClientSession, url: str, prompt: list[int], tokens: int, seed: int) -> int:
    body = {"prompt": prompt, "max_tokens": tokens, "ignore_eos": True, "temperature": 1.0,
            "seed": seed, "logprobs": 0, "return_tokens_as_token_ids": True}  # fmt: skip
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        data = await resp.json()
    return len(data["choices"][0]["token_ids"])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, pid: int, prompts: list[list[int]], batch: int, tokens: int, seed: int
) -> tuple[int, float, float]:
    """(generated tokens, wall seconds, server CPU seconds) for `batch` concurrent requests."""
    async with aiohttp.ClientSession() as session:
        start, cpu = time.perf_counter(), cpu_seconds(pid)
        jobs = [one(session, url, prompts[i % len(prompts)], tokens, seed + i) for i in range(batch)]
        generated = sum(await asyncio.gather(*jobs))
        return generated, time.perf_counter() - start, cpu_seconds(pid) - cpu


async def next_turn(url: str, history: int = 2000) -> None:
    """An agent's next turn over a long history: cold prefill vs the prefix cache."""
    async with aiohttp.ClientSession() as session:

        async def timed(prompt: list[int]) -> tuple[float, list[int]]:
            body = {"prompt": prompt, "max_tokens": 4, "ignore_eos": True, "return_token_ids": True}
            start = time.perf_counter()
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                resp.raise_for_status()
                ids = (await resp.json())["choices"][0]["token_ids"]
            return time.perf_counter() - start, ids

        first = list(range(1000, 1000 + history))
        _, reply = await timed(first)
        suffix = [198, 1, 4093, 198, 2]
        warm, _ = await timed(first + reply + suffix)  # extends a finished sequence: cached
        other = list(range(5000, 5000 + history + len(reply) + len(suffix)))
        cold, _ = await timed(other)  # same length, nothing cached
    print(f"next turn over a {history}-token history (4 new tokens): cold {cold:.2f} s, "
          f"prefix cache {warm:.2f} s ({cold / warm:.1f}x)")


def chat_prompts(tokenizer) -> list[list[int]]:  # noqa: ANN001 - a transformers tokenizer
    prompts = []
    for q in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                            add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return prompts


async def run(url: str, pid: int, prompts: list[list[int]], tokens: int, rounds: int,
              history: int) -> None:
    """The measurements against a running server (`pid`: its process, for CPU time)."""
    await measure(url, pid, prompts, 1, min(8, tokens), 0)  # warm-up
    totals = {b: [0, 0.0, 0.0] for b in (1, 4, 8)}
    # Batch sizes interleave within each round so background load hits them alike.
    for r in range(rounds):
        for batch in totals:
            n, secs, cpu = await measure(url, pid, prompts, batch, tokens, 100 * r)
            for i, v in enumerate((n, secs, cpu)):
                totals[batch][i] += v
    wall = {b: n / secs for b, (n, secs, _) in totals.items()}
    per_cpu = {b: n / cpu for b, (n, _, cpu) in totals.items()}
    print(f"({tokens} tokens/request, {rounds} rounds; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    print(f"{'batch':>5} {'tok/s':>8} {'vs b1':>7} {'tok/cpu-s':>10} {'vs b1':>7}")
    for b in totals:
        print(f"{b:>5} {wall[b]:>8.1f} {wall[b] / wall[1]:>6.2f}x {per_cpu[b]:>10.1f} "
              f"{per_cpu[b] / per_cpu[1]:>6.2f}x")
    await next_turn(url, history)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="only proves it works")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.rounds = 2, 1

    from transformers import AutoTokenizer

    prompts = chat_prompts(AutoTokenizer.from_pretrained(str(ensure_checkpoint())))
    server = EmbeddedServerProcess(max_batch_size=8)
    t0 = time.perf_counter()
    url = server.start()
    print(f"server ready in {time.perf_counter() - t0:.1f} s (checkpoint already converted)")
    try:
        await run(url, server.proc.pid, prompts, args.tokens, args.rounds,
                  64 if args.smoke else 2000)
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
