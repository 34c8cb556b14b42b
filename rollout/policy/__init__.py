"""Policy clients: `PolicyConfig` and `make_policy`.

Every client keeps a token-exact record per trajectory (see `conversation.py`):
- `openai_completions` / `embedded`: prompt ids to `/v1/completions` (vLLM shape), sampled ids
  and logprobs back; the training default.
- `sglang`: prompt ids to SGLang `/generate`.
- `openai_chat`: any chat endpoint, text only; tokens rebuilt, logprobs unavailable.
- `gold`: replays the task's reference solution through the same tool path.
- `scripted`: replays canned responses (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollout.policy.conversation import TokenConversation, TokenPolicy
from rollout.policy.template import ChatRenderer, load_tokenizer

POLICY_TYPES = ("openai_completions", "sglang", "openai_chat", "gold", "scripted", "embedded")
# `embedded` gets its base_url from launch.py, which starts the server.
_NEEDS_URL = ("openai_completions", "sglang", "openai_chat")


@dataclass
class PolicyConfig:
    type: str = "openai_completions"
    base_url: str = ""
    model: str = "default"
    tokenizer: str = ""  # a local dir or a cached HF name; loaded offline
    chat_template: str | None = None  # override: a Jinja file path or string
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. enable_thinking
    api_key_env: str | None = None  # the *name* of the env var holding the key
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    stop: list[str] | None = None
    request_timeout: float = 300.0
    max_retries: int = 3
    max_connections: int = 64
    responses: list[str] = field(default_factory=list)  # scripted

    def validate(self) -> None:
        if self.type not in POLICY_TYPES:
            raise ValueError(f"policy.type {self.type!r} is unknown; use one of {', '.join(POLICY_TYPES)}")
        if self.type in _NEEDS_URL and not self.base_url:
            raise ValueError(f"policy.type={self.type} needs policy.base_url")
        if not self.tokenizer:
            raise ValueError("policy.tokenizer is empty; set it to the model's tokenizer (a local dir)")
        if self.max_tokens <= 0:
            raise ValueError("policy.max_tokens must be positive")


def make_policy(cfg: PolicyConfig, env: Any | None = None) -> TokenPolicy:
    """Build the client for `cfg.type`. `env` (a TaskEnv) is needed only by `gold`."""
    cfg.validate()
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.chat_template)
    renderer = ChatRenderer(tokenizer, cfg.template_kwargs)
    if cfg.type in ("openai_completions", "embedded"):
        from rollout.policy.completions import CompletionsPolicy

        policy: TokenPolicy = CompletionsPolicy(cfg, renderer)
        policy.name = cfg.type
        return policy
    if cfg.type == "sglang":
        from rollout.policy.sglang import SGLangPolicy

        return SGLangPolicy(cfg, renderer)
    if cfg.type == "openai_chat":
        from rollout.policy.chat import ChatPolicy

        return ChatPolicy(cfg, renderer)
    from rollout.policy.replay import GoldPolicy, ScriptedPolicy

    if cfg.type == "gold":
        return GoldPolicy(cfg, renderer, env)
    return ScriptedPolicy(cfg, renderer)


__all__ = [
    "ChatRenderer", "PolicyConfig", "TokenConversation", "TokenPolicy", "load_tokenizer", "make_policy",
]
