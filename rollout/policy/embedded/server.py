"""OpenAI-compatible HTTP server (aiohttp) around the embedded engine.

Routes: `POST /v1/completions` (prompt as token ids or text; vLLM's response shape),
`POST /v1/chat/completions`, `POST /tokenize`, `POST /detokenize`, `GET /v1/models`,
`GET /health`. Concurrent requests share decode steps through `BatchedEngine`. Bad input is
answered 400 with a one-line reason; nothing a client sends can stop the server. A client
that disconnects cancels its generation, which frees its batch row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from .engine import BatchedEngine, EngineError, GenerationResult
from .responses import TokenNamer, chat_body, completion_body, error_body
from .sampling import InvalidRequest, SamplingParams, params_from_request

log = logging.getLogger(__name__)

ENGINE_KEY = web.AppKey("engine", BatchedEngine)
MAX_N = 16


def create_app(engine: BatchedEngine, *, model_name: str | None = None) -> web.Application:
    """An app serving `engine`; the engine is started and stopped with the app."""
    app = web.Application(client_max_size=64 * 1024**2, middlewares=[_errors])
    app[ENGINE_KEY] = engine
    app["model_name"] = model_name or engine.loaded.name
    app["started"] = int(time.time())

    async def on_startup(_: web.Application) -> None:
        await engine.start()

    async def on_cleanup(_: web.Application) -> None:
        await engine.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/detokenize", _detokenize)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidRequest as exc:
        return web.json_response(error_body(str(exc), 400), status=400)
    except EngineError as exc:
        return web.json_response(error_body(str(exc), 500), status=500)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response(error_body(exc.reason or "error", exc.status), status=exc.status)
        raise


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise InvalidRequest("streaming is not supported by the embedded server; send stream=false")
    return body


async def _health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    stats = {
        "active": engine.active,
        "steps": engine.steps,
        "max_batch_seen": engine.max_batch_seen,
        "prefix_hits": engine.prefix_cache.hits,
        "prefix_reused_tokens": engine.prefix_cache.reused_tokens,
    }
    return web.json_response({"status": "ok", **stats})


async def _models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    card = {
        "id": request.app["model_name"],
        "object": "model",
        "created": request.app["started"],
        "owned_by": "rollout-cluster",
        "root": str(engine.loaded.path),
        "max_model_len": engine.max_context,
    }
    return web.json_response({"object": "list", "data": [card]})


def _prompts(engine: BatchedEngine, prompt: Any) -> list[list[int]]:
    """Normalize `prompt`: a string, a list of token ids, or a list of either."""
    tok = engine.tokenizer
    if isinstance(prompt, str):
        return [tok.encode(prompt, add_special_tokens=False)]
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append(tok.encode(p, add_special_tokens=False))
            elif isinstance(p, list) and p and all(type(t) is int for t in p):
                out.append(p)
            else:
                raise InvalidRequest("each prompt must be a string or a non-empty list of token ids")
        return out
    raise InvalidRequest("prompt must be a string, a list of token ids, or a list of those")


def _n(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"n must be an integer in [1, {MAX_N}], got {n!r}")
    return n


async def _run_all(engine: BatchedEngine, prompts: list[list[int]], n: int, params: SamplingParams) -> list[GenerationResult]:
    jobs = []
    for prompt in prompts:
        for j in range(n):
            p = params
            if params.seed is not None and j:  # distinct but reproducible samples per choice
                p = SamplingParams(**{**params.__dict__, "seed": params.seed + j})
            jobs.append(engine.generate(prompt, p))
    return list(await asyncio.gather(*jobs))


async def _completions(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    body = await _body(request)
    if body.get("echo"):
        raise InvalidRequest("echo is not supported by the embedded server")
    prompts = _prompts(engine, body.get("prompt"))
    n = _n(body)
    params = params_from_request(body)
    results = await _run_all(engine, prompts, n, params)
    name = TokenNamer(engine.tokenizer, bool(body.get("return_tokens_as_token_ids")))
    payload = completion_body(
        request.app["model_name"],
        results,
        prompts,
        n,
        want_logprobs=body.get("logprobs") is not None,
        name=name,
        return_prompt_ids=bool(body.get("return_token_ids")),
    )
    return web.json_response(payload)


def _chat_prompt(engine: BatchedEngine, body: dict[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages must be a non-empty list of message objects")
    try:
        ids = engine.tokenizer.apply_chat_template(
            messages,
            tools=body.get("tools") or None,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            tokenize=True,
        )
    except Exception as exc:  # template errors are the caller's malformed messages
        raise InvalidRequest(f"could not apply the chat template to these messages: {exc}") from None
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


async def _chat(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    body = await _body(request)
    prompt = _chat_prompt(engine, body)
    n = _n(body)
    params = params_from_request(body)
    results = await _run_all(engine, [prompt], n, params)
    name = TokenNamer(engine.tokenizer, bool(body.get("return_tokens_as_token_ids")))
    payload = chat_body(
        request.app["model_name"],
        results,
        prompt,
        want_logprobs=bool(body.get("logprobs")),
        name=name,
        return_prompt_ids=bool(body.get("return_token_ids")),
    )
    return web.json_response(payload)


async def _tokenize(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    body = await _body(request)
    if "messages" in body:
        tokens = _chat_prompt(engine, body)
    elif isinstance(body.get("prompt"), str):
        tokens = engine.tokenizer.encode(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", False)))
    else:
        raise InvalidRequest("send either prompt (a string) or messages")
    return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_context})


async def _detokenize(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    body = await _body(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise InvalidRequest("tokens must be a list of token ids")
    return web.json_response({"prompt": engine.tokenizer.decode(tokens)})
