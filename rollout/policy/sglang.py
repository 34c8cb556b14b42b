"""Token-in/token-out over SGLang's native `/generate` (input_ids + return_logprob).

SGLang reports each sampled token as `[logprob, token_id, text|null]` in
`meta_info.output_token_logprobs` and the finish reason as `{"type": "stop"|"length", ...}`.
Newer versions also return `output_ids`; when both are present they must agree.
"""

from __future__ import annotations

from typing import Any

from rollout.policy.conversation import Generation, TokenConversation
from rollout.policy.endpoint import EndpointPolicy
from rollout.types import PolicyError


class SGLangPolicy(EndpointPolicy):
    name = "sglang"

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        c = self.cfg
        params: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "skip_special_tokens": False,
            "stop_token_ids": sorted(self.renderer.stop_ids),
        }
        if c.stop:
            params["stop"] = list(c.stop)
        if (seed := self.turn_seed(conv)) is not None:
            params["sampling_seed"] = seed
        payload = {"input_ids": conv.token_ids(), "sampling_params": params, "return_logprob": True}
        return parse_generate(await self.http.post_json("/generate", payload))


def parse_generate(data: dict[str, Any]) -> Generation:
    meta = data.get("meta_info")
    if not isinstance(meta, dict):
        raise PolicyError("SGLang reply has no meta_info; is this an SGLang /generate endpoint?")
    entries = meta.get("output_token_logprobs")
    if not isinstance(entries, list):
        raise PolicyError("SGLang reply has no meta_info.output_token_logprobs; send return_logprob")
    try:
        logprobs = [float(e[0]) if e[0] is not None else 0.0 for e in entries]
        ids = [int(e[1]) for e in entries]
    except (TypeError, ValueError, IndexError) as exc:
        raise PolicyError(f"malformed output_token_logprobs entry: {exc}") from exc
    output_ids = data.get("output_ids")
    if output_ids is not None and list(output_ids) != ids:
        raise PolicyError("SGLang output_ids disagree with output_token_logprobs")
    finish = meta.get("finish_reason")
    kind = finish.get("type") if isinstance(finish, dict) else finish
    return Generation(token_ids=ids, logprobs=logprobs, finish_reason=str(kind or "stop"))
