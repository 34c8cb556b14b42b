"""`openai_chat`: any OpenAI-compatible `/v1/chat/completions` endpoint, text only.

The endpoint sees structured messages (assistant `tool_calls`, tool messages with
`tool_call_id`). The token record is rebuilt locally: the assistant's content plus its tool
calls rendered in the Hermes `<tool_call>` format, tokenized, plus the end-of-turn token. These
are not the ids the server sampled, so logprobs are unavailable and marked so.

Call ids are rewritten to `call_<i>` in order, which is how the agent's parser numbers the
calls it reads back from the text; the tool messages it sends then match.
"""

from __future__ import annotations

import json
from typing import Any

from rollout.policy.conversation import Generation, TokenConversation
from rollout.policy.endpoint import EndpointPolicy
from rollout.agent.toolcalls import CLOSE_TAG, OPEN_TAG
from rollout.types import PolicyError


class ChatPolicy(EndpointPolicy):
    name = "openai_chat"
    logprobs_available = False

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        c = self.cfg
        payload: dict[str, Any] = {
            "model": c.model,
            "messages": conv.api_messages,
            "max_tokens": max_tokens,
            "temperature": c.temperature,
            "top_p": c.top_p,
        }
        if conv.tools:
            payload["tools"] = conv.tools
        if (seed := self.turn_seed(conv)) is not None:
            payload["seed"] = seed
        if c.stop:
            payload["stop"] = list(c.stop)
        data = await self.http.post_json("/v1/chat/completions", payload)
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise PolicyError(f"chat reply has no choices[0].message: {str(data)[:200]}") from exc
        content = message.get("content") or ""
        raw_calls = message.get("tool_calls") or []
        if not isinstance(content, str) or not isinstance(raw_calls, list):
            raise PolicyError("chat reply message has a non-string content or non-list tool_calls")
        api_calls = []
        blocks = []
        for i, call in enumerate(raw_calls):
            fn = call.get("function") if isinstance(call, dict) else None
            fn = fn if isinstance(fn, dict) else {}
            name, args = fn.get("name", ""), fn.get("arguments", "{}")
            wire_args = args if isinstance(args, str) else json.dumps(args)
            api_calls.append({"id": f"call_{i}", "type": "function",
                              "function": {"name": name, "arguments": wire_args}})
            blocks.append(_hermes_block(name, args))
        text = content
        if blocks:
            text = (content + "\n" if content else "") + "\n".join(blocks)
        ids = self.renderer.encode(text) + self.renderer.turn_closing_ids()
        api_message: dict[str, Any] = {"role": "assistant", "content": content}
        if api_calls:
            api_message["tool_calls"] = api_calls
        finish = choice.get("finish_reason") or "stop"
        return Generation(token_ids=ids, logprobs=None, finish_reason=finish, api_message=api_message)


def _hermes_block(name: Any, args: Any) -> str:
    """Hermes text for a call; string arguments stay a string so a bad one still errors."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass  # kept as a string: the parser reports it to the model
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"
