"""JSON bodies in the shapes vLLM's OpenAI-compatible server uses.

Completions: `choices[].logprobs` = {tokens, token_logprobs, top_logprobs, text_offset}; with
`return_tokens_as_token_ids` every token string is "token_id:<id>". Every choice also carries
the plain `token_ids` list (vLLM does so with `return_token_ids`), and `prompt_token_ids` when
`return_token_ids` is set. Chat: `choices[].logprobs.content[]` = {token, logprob, bytes,
top_logprobs}.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .engine import GenerationResult


class TokenNamer:
    """Turns token ids into the strings the logprobs payload shows."""

    def __init__(self, tokenizer: Any, as_ids: bool) -> None:
        self.tokenizer = tokenizer
        self.as_ids = as_ids

    def __call__(self, token_id: int) -> str:
        if self.as_ids:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])


def completion_logprobs(result: GenerationResult, name: TokenNamer, text_start: int = 0) -> dict[str, Any]:
    tokens = [name(t) for t in result.token_ids]
    offsets, at = [], text_start
    for t in result.token_ids:
        offsets.append(at)
        at += len(name.tokenizer.decode([t]))
    top = None
    if result.top_logprobs is not None:
        top = [{name(t): lp for t, lp in alts.items()} for alts in result.top_logprobs]
    else:
        top = [{tok: lp} for tok, lp in zip(tokens, result.logprobs)]
    return {
        "tokens": tokens,
        "token_logprobs": list(result.logprobs),
        "top_logprobs": top,
        "text_offset": offsets,
    }


def completion_body(
    model: str,
    results: list[GenerationResult],
    prompts: list[list[int]],
    n: int,
    *,
    want_logprobs: bool,
    name: TokenNamer,
    return_prompt_ids: bool,
) -> dict[str, Any]:
    choices = []
    for index, result in enumerate(results):
        choice: dict[str, Any] = {
            "index": index,
            "text": result.text,
            "logprobs": completion_logprobs(result, name) if want_logprobs else None,
            "finish_reason": result.finish_reason,
            "stop_reason": result.stop_reason,
            "token_ids": list(result.token_ids),
        }
        if return_prompt_ids:
            choice["prompt_token_ids"] = list(prompts[index // n])
        choices.append(choice)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(results, prompts),
    }


def chat_body(
    model: str,
    results: list[GenerationResult],
    prompt: list[int],
    *,
    want_logprobs: bool,
    name: TokenNamer,
    return_prompt_ids: bool,
) -> dict[str, Any]:
    choices = []
    for index, result in enumerate(results):
        logprobs = None
        if want_logprobs:
            content = []
            alts = result.top_logprobs or [{} for _ in result.token_ids]
            for token_id, lp, top in zip(result.token_ids, result.logprobs, alts):
                token = name(token_id)
                content.append(
                    {
                        "token": token,
                        "logprob": lp,
                        "bytes": list(token.encode("utf-8")),
                        "top_logprobs": [
                            {"token": name(t), "logprob": v, "bytes": list(name(t).encode("utf-8"))}
                            for t, v in top.items()
                        ],
                    }
                )
            logprobs = {"content": content}
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": logprobs,
            "finish_reason": result.finish_reason,
            "stop_reason": result.stop_reason,
            "token_ids": list(result.token_ids),
        }
        choices.append(choice)
    body: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(results, [prompt]),
    }
    if return_prompt_ids:
        body["prompt_token_ids"] = list(prompt)
    return body


def error_body(message: str, status: int) -> dict[str, Any]:
    kind = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
        status, "InternalServerError"
    )
    return {"object": "error", "error": {"message": message, "type": kind, "code": status}, "message": message}


def _usage(results: list[GenerationResult], prompts: list[list[int]]) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(r.token_ids) for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
