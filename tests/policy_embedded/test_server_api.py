"""The HTTP surface: vLLM response shape, token-id round trip, stop handling, chat, bad input."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .conftest import chat_ids, get, post, wait_for


async def test_completion_shape_and_round_trip(base_url, reference):
    tok = reference.tokenizer
    prompt = chat_ids(tok, "What is the capital of France?")
    status, body = await post(
        base_url,
        "/v1/completions",
        {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 2,
         "return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    assert status == 200
    assert body["object"] == "text_completion" and body["model"] == "SmolLM2-135M-Instruct"
    choice = body["choices"][0]
    ids = choice["token_ids"]
    assert choice["prompt_token_ids"] == prompt
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                             "total_tokens": len(prompt) + len(ids)}  # fmt: skip
    # A real model, correctly converted: greedy answers the question, then ends its turn.
    assert "Paris" in choice["text"]
    assert choice["finish_reason"] == "stop" and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == choice["text"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    for token, top, value in zip(lp["tokens"], lp["top_logprobs"], lp["token_logprobs"]):
        assert top[token] == value and 2 <= len(top) <= 3
        assert value >= max(top.values()) - 1e-6  # greedy picks the most likely token


async def test_text_prompt_and_special_tokens_kept_on_request(base_url, reference):
    tok = reference.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    status, body = await post(
        base_url, "/v1/completions",
        {"prompt": text, "max_tokens": 40, "temperature": 0, "skip_special_tokens": False},
    )  # fmt: skip
    assert status == 200
    choice = body["choices"][0]
    assert choice["text"] == tok.decode(choice["token_ids"], skip_special_tokens=False)
    if choice["finish_reason"] == "stop":
        assert choice["text"].endswith("<|im_end|>")


@pytest.mark.parametrize("include", [False, True])
async def test_stop_string(base_url, reference, include):
    tok = reference.tokenizer
    prompt = chat_ids(tok, "Count from one to ten.")
    status, body = await post(
        base_url, "/v1/completions",
        {"prompt": prompt, "max_tokens": 40, "temperature": 0, "stop": ["\n"],
         "include_stop_str_in_output": include},
    )  # fmt: skip
    assert status == 200
    choice = body["choices"][0]
    full = tok.decode(choice["token_ids"], skip_special_tokens=True)
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "\n"
    if include:
        assert choice["text"] == full and full.endswith("\n")  # ids round-trip exactly
    else:
        assert "\n" not in choice["text"] and full.startswith(choice["text"])
        assert full[len(choice["text"]) :].startswith("\n")


async def test_n_and_list_prompts(base_url, reference):
    p1 = chat_ids(reference.tokenizer, "hi")
    p2 = chat_ids(reference.tokenizer, "hello")
    status, body = await post(
        base_url, "/v1/completions", {"prompt": [p1, p2], "n": 2, "max_tokens": 4, "seed": 5}
    )
    assert status == 200
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert all(1 <= len(c["token_ids"]) <= 4 for c in choices)
    assert body["usage"]["prompt_tokens"] == len(p1) + len(p2)


async def test_chat_completions(base_url, reference):
    tok = reference.tokenizer
    status, body = await post(
        base_url, "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16,
         "logprobs": True, "top_logprobs": 1, "return_token_ids": True},
    )  # fmt: skip
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == tok.decode(choice["token_ids"], skip_special_tokens=True)
    assert len(choice["logprobs"]["content"]) == len(choice["token_ids"])
    assert body["prompt_token_ids"] == chat_ids(tok, "What is 2+2?")


async def test_models_and_tokenize(base_url, reference):
    models = await get(base_url, "/v1/models")
    assert models["data"][0]["id"] == "SmolLM2-135M-Instruct"
    status, body = await post(base_url, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["tokens"] == chat_ids(reference.tokenizer, "hi")
    status, body = await post(base_url, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and body["prompt"].startswith("<|im_start|>")


BAD_REQUESTS = [
    ("/v1/completions", {"prompt": [], "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": [1, -5], "max_tokens": 4}, "token ids"),
    ("/v1/completions", {"prompt": [1, 10**9], "max_tokens": 4}, "token ids"),
    ("/v1/completions", {"prompt": [1.5, 2], "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": {"x": 1}}, "prompt"),
    ("/v1/completions", {"prompt": [1], "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": [1], "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": [1], "temperature": "hot"}, "sampling parameter"),
    ("/v1/completions", {"prompt": [1], "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": [1], "stop": [""]}, "stop"),
    ("/v1/completions", {"prompt": [1], "seed": "x"}, "seed"),
    ("/v1/completions", {"prompt": [1], "n": 1000}, "n must"),
    ("/v1/completions", {"prompt": [1], "logprobs": 999}, "logprobs"),
    ("/v1/completions", {"prompt": [1], "stream": True}, "streaming"),
    ("/v1/completions", {"prompt": [1] * 9000, "max_tokens": 4}, "context"),
    ("/v1/completions", [1, 2, 3], "JSON object"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "max_tokens"),
    ("/detokenize", {"tokens": ["a"]}, "tokens"),
]


@pytest.mark.parametrize("path,body,needle", BAD_REQUESTS)
async def test_bad_input_is_a_clear_400(base_url, path, body, needle):
    status, reply = await post(base_url, path, body)
    assert status == 400
    assert needle in reply["error"]["message"]


async def test_malformed_json_then_still_serving(base_url):
    status, reply = await post(base_url, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and "JSON" in reply["error"]["message"]
    status, reply = await post(base_url, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2})
    assert status == 200 and len(reply["choices"][0]["token_ids"]) <= 2


async def test_disconnected_client_frees_its_batch_row(base_url, reference):
    prompt = chat_ids(reference.tokenizer, "Write a very long essay.")

    async def long_request() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(
                f"{base_url}/v1/completions",
                json={"prompt": prompt, "max_tokens": 4000, "ignore_eos": True},
            )

    task = asyncio.create_task(long_request())

    async def busy() -> bool:
        return (await get(base_url, "/health"))["active"] >= 1

    async def idle() -> bool:
        return (await get(base_url, "/health"))["active"] == 0

    await wait_for(busy)
    task.cancel()  # closes the connection mid-generation
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(idle, deadline=30)
