"""Shared, expensive fixtures: one converted checkpoint, one real server process, one
in-process reference model for teacher-forced recomputation (all session-scoped)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollout.policy.embedded import EmbeddedServerProcess, ensure_checkpoint, load_model


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    # The default cache: converted once per machine, then reused by every run.
    return ensure_checkpoint()


@pytest.fixture(scope="session")
def reference(checkpoint: Path) -> Any:
    return load_model()


@pytest.fixture(scope="session")
def server(checkpoint: Path) -> Iterator[EmbeddedServerProcess]:
    proc = EmbeddedServerProcess(max_batch_size=8)
    proc.start(timeout=240)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(server: EmbeddedServerProcess) -> str:
    assert server.base_url is not None
    return server.base_url


async def post(base_url: str, path: str, body: Any, *, raw: bytes | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else None
        kwargs = {"data": data, "headers": {"Content-Type": "application/json"}} if raw is not None else {"json": body}
        async with session.post(f"{base_url}{path}", **kwargs) as resp:
            return resp.status, await resp.json()


async def get(base_url: str, path: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}{path}") as resp:
            assert resp.status == 200
            return await resp.json()


async def wait_for(predicate, *, deadline: float = 60.0, interval: float = 0.02) -> None:
    """Poll an async predicate until it holds; fail after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(interval)


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def teacher_forced_logprobs(reference: Any, prompt: list[int], sampled: list[int], temperature: float) -> list[float]:
    """log_softmax(logits / T) of each sampled token, from one unbatched forward pass."""
    import torch

    ids = torch.tensor([prompt + sampled])
    with torch.inference_mode():
        logits = reference.model(input_ids=ids).logits[0].float()
    logits = logits[len(prompt) - 1 : -1]
    t = temperature if temperature > 0 else 1.0
    lp = torch.log_softmax(logits / t, dim=-1)
    return lp[torch.arange(len(sampled)), torch.tensor(sampled)].tolist()
