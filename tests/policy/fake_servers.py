"""In-test stand-ins for GPU inference servers (which cannot run here), in their real shapes.

`FakeModelServer` serves, on one aiohttp port:
- `POST /v1/completions` as vLLM does with a token-id prompt, `logprobs`,
  `return_tokens_as_token_ids` and `return_token_ids`: `choices[0].token_ids`, and
  `logprobs.{tokens: ["token_id:<n>"], token_logprobs, top_logprobs, text_offset}`;
- `POST /generate` as SGLang does (`meta_info.output_token_logprobs` = [logprob, id, null]);
- `POST /v1/chat/completions` as an OpenAI chat endpoint with structured `tool_calls`.

Its "model" samples real ids of a real tokenizer: a few random ordinary-vocabulary tokens,
then, while the prompt holds fewer than `tool_turns` tool responses, a tool call whose text is
tokenized one character at a time (a valid but *non-canonical* tokenization, so any client
that re-tokenizes decoded text produces different ids), then the end-of-turn token.
Every request and reply is recorded for the tests to check against.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_PLAIN = re.compile(r"^Ġ?[A-Za-z0-9]+$")  # byte-level BPE: Ġ is a leading space


@dataclass
class Exchange:
    path: str
    request: dict[str, Any]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class FakeModelServer:
    def __init__(
        self,
        tokenizer: Any,
        *,
        tool_turns: int = 3,
        commands: list[str] | None = None,
        seed: int = 0,
        end_id: int | None = None,
    ) -> None:
        self.tok = tokenizer
        self.tool_turns = tool_turns
        self.commands = commands or ["echo hello", "printf 'a\\nb\\n'", "ls"]
        self.rng = random.Random(seed)
        self.end_id = end_id if end_id is not None else tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.response_id = tokenizer.convert_tokens_to_ids("<tool_response>")
        vocab = tokenizer.get_vocab()
        self.plain_ids = sorted(i for t, i in vocab.items() if _PLAIN.match(t))
        self.added = {t: i for t, i in tokenizer.get_added_vocab().items()}
        self.exchanges: list[Exchange] = []
        self.fail_statuses: list[int] = []  # statuses to answer with before serving normally
        self.delay = 0.0
        self.requests = 0
        self.auth_headers: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._released = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._released.set()
        if self.runner is not None:
            await self.runner.cleanup()

    # --- the "model" -----------------------------------------------------------------------

    def next_text(self, tool_responses_seen: int) -> str | None:
        """The tool-call text for this turn, or None once the model is done."""
        if tool_responses_seen >= self.tool_turns:
            return None
        command = self.commands[tool_responses_seen % len(self.commands)]
        call = json.dumps({"name": "terminal", "arguments": {"command": command}})
        return f"\n<tool_call>\n{call}\n</tool_call>"

    def sample(self, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float], str]:
        seen = prompt.count(self.response_id)
        ids = [self.rng.choice(self.plain_ids) for _ in range(self.rng.randint(1, 6))]
        text = self.next_text(seen)
        if text is not None:
            ids += self.char_ids(text)
        ids.append(self.end_id)
        finish = "stop"
        if len(ids) > max_tokens:
            ids, finish = ids[:max_tokens], "length"
        logprobs = [-round(self.rng.uniform(0.001, 5.0), 4) for _ in ids]
        return ids, logprobs, finish

    def char_ids(self, text: str) -> list[int]:
        """Special tags as their single ids, everything else one character at a time."""
        out: list[int] = []
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")"
        for part in re.split(pattern, text):
            if part in self.added:
                out.append(self.added[part])
            else:
                for ch in part:
                    out += self.tok.encode(ch, add_special_tokens=False)
        return out

    # --- endpoints -------------------------------------------------------------------------

    async def _gate(self, request: web.Request) -> web.Response | None:
        self.requests += 1
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.delay:  # a slow model; stop() releases waiting requests at once
            try:
                await asyncio.wait_for(self._released.wait(), self.delay)
            except TimeoutError:
                pass
        if self.fail_statuses:
            status = self.fail_statuses.pop(0)
            return web.json_response({"error": {"message": f"injected {status}"}}, status=status)
        return None

    async def _completions(self, request: web.Request) -> web.Response:
        if (failed := await self._gate(request)) is not None:
            return failed
        body = await request.json()
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(i, int) for i in prompt)):
            return web.json_response({"error": {"message": "prompt must be token ids"}}, status=400)
        ids, logprobs, finish = self.sample(prompt, int(body.get("max_tokens", 16)))
        self.exchanges.append(Exchange("/v1/completions", body, ids, logprobs))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        tokens = [f"token_id:{i}" if as_ids else self.tok.decode([i]) for i in ids]
        offsets, pos = [], 0
        for i in ids:
            offsets.append(pos)
            pos += len(self.tok.decode([i]))
        choice: dict[str, Any] = {
            "index": 0,
            "text": self.tok.decode(ids, skip_special_tokens=True),
            "logprobs": {
                "text_offset": offsets,
                "token_logprobs": logprobs,
                "tokens": tokens,
                "top_logprobs": [{t: lp} for t, lp in zip(tokens, logprobs)],
            },
            "finish_reason": finish,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
            choice["prompt_token_ids"] = prompt
        return web.json_response({
            "id": f"cmpl-{len(self.exchanges)}", "object": "text_completion", "created": 0,
            "model": body.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                      "total_tokens": len(prompt) + len(ids)},
        })

    async def _generate(self, request: web.Request) -> web.Response:
        if (failed := await self._gate(request)) is not None:
            return failed
        body = await request.json()
        prompt = body["input_ids"]
        params = body.get("sampling_params", {})
        ids, logprobs, finish = self.sample(prompt, int(params.get("max_new_tokens", 16)))
        self.exchanges.append(Exchange("/generate", body, ids, logprobs))
        finish_reason = ({"type": "stop", "matched": ids[-1]} if finish == "stop"
                         else {"type": "length", "length": len(ids)})
        return web.json_response({
            "text": self.tok.decode(ids, skip_special_tokens=True),
            "output_ids": ids,
            "meta_info": {
                "id": str(len(self.exchanges)),
                "finish_reason": finish_reason,
                "prompt_tokens": len(prompt),
                "completion_tokens": len(ids),
                "output_token_logprobs": [[lp, i, None] for lp, i in zip(logprobs, ids)],
            },
        })

    async def _chat(self, request: web.Request) -> web.Response:
        if (failed := await self._gate(request)) is not None:
            return failed
        body = await request.json()
        seen = sum(1 for m in body["messages"] if m.get("role") == "tool")
        self.exchanges.append(Exchange("/v1/chat/completions", body))
        message: dict[str, Any] = {"role": "assistant", "content": "Working on it."}
        finish = "stop"
        if seen < self.tool_turns:
            command = self.commands[seen % len(self.commands)]
            message["tool_calls"] = [{
                "id": f"chatcmpl-tool-{seen}", "type": "function",
                "function": {"name": "terminal", "arguments": json.dumps({"command": command})},
            }]
            finish = "tool_calls"
        else:
            message["content"] = "All done."
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        })
