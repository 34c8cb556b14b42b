"""Token-in/token-out over an OpenAI-compatible `/v1/completions` (as vLLM serves it).

The prompt is sent as a list of token ids. The reply's sampled ids are read from
`choices[0].token_ids` (vLLM >= 0.10.2 with `return_token_ids`) or else from
`logprobs.tokens` entries of the form "token_id:<id>" (`return_tokens_as_token_ids`); the
text is never re-tokenized. A reply that gives neither is a PolicyError, not a guess.
"""

from __future__ import annotations

from typing import Any

from rollout.policy.conversation import Generation, TokenConversation
from rollout.policy.endpoint import EndpointPolicy
from rollout.types import PolicyError

TOKEN_ID_PREFIX = "token_id:"


class CompletionsPolicy(EndpointPolicy):
    name = "openai_completions"

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        c = self.cfg
        payload: dict[str, Any] = {
            "model": c.model,
            "prompt": conv.token_ids(),
            "max_tokens": max_tokens,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "logprobs": 0,  # the sampled token's own logprob only
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "stop_token_ids": sorted(self.renderer.stop_ids),
        }
        if (seed := self.turn_seed(conv)) is not None:
            payload["seed"] = seed
        if c.stop:
            payload["stop"] = list(c.stop)
        data = await self.http.post_json("/v1/completions", payload)
        return parse_completion(data)


class EmbeddedPolicy(CompletionsPolicy):
    """The same client against the embedded CPU server (rollout/policy/embedded)."""

    name = "embedded"


def parse_completion(data: dict[str, Any]) -> Generation:
    """Sampled ids, logprobs and finish reason from a vLLM-shaped completions reply."""
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise PolicyError(f"completions reply has no choices: {str(data)[:200]}") from exc
    lp = choice.get("logprobs") or {}
    token_logprobs = lp.get("token_logprobs")
    ids = choice.get("token_ids")
    if ids is None:
        tokens = lp.get("tokens")
        if not tokens:
            raise PolicyError(
                "completions reply has neither token_ids nor logprobs.tokens; the server must "
                "support return_token_ids or return_tokens_as_token_ids (vLLM)"
            )
        ids = [_token_id(t) for t in tokens]
    if token_logprobs is None:
        raise PolicyError("completions reply has no logprobs.token_logprobs; the server ignored logprobs")
    if len(token_logprobs) != len(ids):
        raise PolicyError(f"reply has {len(ids)} token ids but {len(token_logprobs)} logprobs")
    logprobs = [float(x) if x is not None else 0.0 for x in token_logprobs]
    return Generation(
        token_ids=list(ids), logprobs=logprobs, finish_reason=choice.get("finish_reason") or "stop"
    )


def _token_id(token: Any) -> int:
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            pass
    raise PolicyError(
        f"logprobs token {str(token)[:40]!r} is not 'token_id:<n>'; "
        "enable return_tokens_as_token_ids on the server"
    )
