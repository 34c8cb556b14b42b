"""Acceptance: server logprobs equal a teacher-forced recomputation within 1e-3, for greedy and
sampled decoding at temperature 1.0 and 0.7, with several requests decoding in one batch (a
batch at 1.0 and greedy; 0.7 where a request joins mid-decode and under top-p)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from .conftest import chat_ids, get, post, teacher_forced_logprobs, wait_for

QUESTIONS = [
    "hi",
    "What is the capital of France? Answer in one sentence.",
    "Write a python function that adds two numbers, with a docstring and type hints please.",
    "Name three colours.",
]


async def _complete(base_url: str, prompt: list[int], **params) -> dict:
    status, body = await post(
        base_url,
        "/v1/completions",
        {"prompt": prompt, "logprobs": 0, "return_tokens_as_token_ids": True, **params},
    )
    assert status == 200, body
    return body["choices"][0]


@pytest.mark.parametrize("temperature", [1.0, 0.0])
async def test_batched_logprobs_match_teacher_forcing(base_url, reference, temperature):
    # Prompts of different lengths force left padding inside the batch.
    prompts = [chat_ids(reference.tokenizer, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)
    choices = await asyncio.gather(
        *[_complete(base_url, p, max_tokens=12, temperature=temperature, seed=i) for i, p in enumerate(prompts)]
    )
    assert (await get(base_url, "/health"))["max_batch_seen"] >= 2
    for prompt, choice in zip(prompts, choices):
        ids = choice["token_ids"]
        assert [f"token_id:{i}" for i in ids] == choice["logprobs"]["tokens"]
        expected = teacher_forced_logprobs(reference, prompt, ids, temperature)
        got = choice["logprobs"]["token_logprobs"]
        assert len(got) == len(ids) > 0
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-3


async def test_logprobs_exact_when_a_request_joins_mid_decode(base_url, reference):
    long_prompt = chat_ids(reference.tokenizer, QUESTIONS[2])
    short_prompt = chat_ids(reference.tokenizer, QUESTIONS[0])
    first = asyncio.create_task(
        _complete(base_url, long_prompt, max_tokens=48, temperature=1.0, seed=7, ignore_eos=True)
    )

    async def decoding() -> bool:
        return (await get(base_url, "/health"))["active"] >= 1

    await wait_for(decoding)
    second = await _complete(base_url, short_prompt, max_tokens=6, temperature=0.7, seed=8)
    # The joiner finished while the long request was still decoding: it did not wait for it.
    assert not first.done()
    first_choice = await first
    assert first_choice["finish_reason"] == "length" and len(first_choice["token_ids"]) == 48
    for prompt, choice, t in ((long_prompt, first_choice, 1.0), (short_prompt, second, 0.7)):
        expected = teacher_forced_logprobs(reference, prompt, choice["token_ids"], t)
        assert max(abs(a - b) for a, b in zip(choice["logprobs"]["token_logprobs"], expected)) < 1e-3


async def test_top_p_samples_inside_the_nucleus_and_reports_untruncated_logprobs(base_url, reference):
    prompt = chat_ids(reference.tokenizer, "Tell me a short story about a cat.")
    choice = await _complete(base_url, prompt, max_tokens=16, temperature=0.7, top_p=0.8, seed=3)
    ids = choice["token_ids"]
    with torch.inference_mode():
        logits = reference.model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    probs = torch.softmax(logits[len(prompt) - 1 : -1] / 0.7, dim=-1)
    for pos, token in enumerate(ids):
        # Mass strictly above the chosen token is below top_p: the token is in the nucleus.
        assert float(probs[pos][probs[pos] > probs[pos][token]].sum()) < 0.8 + 1e-4
    expected = teacher_forced_logprobs(reference, prompt, ids, 0.7)
    assert max(abs(a - b) for a, b in zip(choice["logprobs"]["token_logprobs"], expected)) < 1e-3


async def test_same_seed_same_tokens(base_url, reference):
    prompt = chat_ids(reference.tokenizer, "Say something surprising.")
    a, b, c = [await _complete(base_url, prompt, max_tokens=10, temperature=1.0, seed=s) for s in (11, 11, 12)]
    assert a["token_ids"] == b["token_ids"]
    assert a["token_ids"] != c["token_ids"]


async def test_next_turn_reuses_the_cached_prefix_and_stays_exact(base_url, reference):
    tok = reference.tokenizer
    prompt = chat_ids(tok, "Pick a random fruit and describe it.")
    first = await _complete(base_url, prompt, max_tokens=10, temperature=1.0, seed=21, ignore_eos=True)
    before = await get(base_url, "/health")
    # The next turn: everything so far, the reply, then a new user turn (as an agent does).
    suffix = tok.encode("<|im_end|>\n<|im_start|>user\nAnother one.<|im_end|>\n<|im_start|>assistant\n",
                        add_special_tokens=False)  # fmt: skip
    second_prompt = prompt + first["token_ids"] + suffix
    second = await _complete(base_url, second_prompt, max_tokens=10, temperature=1.0, seed=22)
    after = await get(base_url, "/health")
    assert after["prefix_hits"] == before["prefix_hits"] + 1
    # Everything but the last sampled token (never fed through the model) was reused.
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] >= len(prompt) + len(first["token_ids"]) - 1
    expected = teacher_forced_logprobs(reference, second_prompt, second["token_ids"], 1.0)
    assert max(abs(a - b) for a, b in zip(second["logprobs"]["token_logprobs"], expected)) < 1e-3
