"""Policy clients: `PolicyConfig` and `make_policy`.

Every client keeps a token-exact record per trajectory (see `conversation.py`):
- `openai_completions` / `embedded`: prompt ids to `/v1/completions` (vLLM shape), sampled ids
  and logprobs back; the training default.
- `sglang`: prompt ids to SGLang `/generate`.
- `openai_chat`: any chat endpoint, text only; tokens rebuilt, logprobs unavailable.
- `gold`: replays the task's reference solution through the same tool path.
- `scripted`: replays canned responses (tests).
- `simulated`: a model's timing without a model: fixed turns of real tool calls after a set
  latency, scores from a seed (load tests, sizing; see `simulated.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from rollout.config_model import ConfigModel, Str
from rollout.policy.conversation import TokenConversation, TokenPolicy
from rollout.policy.simulated import SimulatedSettings
from rollout.policy.template import ChatRenderer, load_tokenizer

PolicyType = Literal["openai_completions", "sglang", "openai_chat", "gold", "scripted", "embedded",
                     "simulated"]
# `embedded` gets its base_url from launch.py, which starts the server.
_NEEDS_URL = ("openai_completions", "sglang", "openai_chat")


class PolicyConfig(ConfigModel):
    section: ClassVar[str] = "policy"

    type: PolicyType = "openai_completions"
    base_url: Annotated[Str, Field(validate_default=True)] = ""
    model: Str = "default"
    # a local dir or a cached HF name; loaded offline
    tokenizer: Annotated[Str, Field(validate_default=True)] = ""
    chat_template: Str | None = None  # override: a Jinja file path or string
    template_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. enable_thinking
    # How tools are described when the chat template ignores `tools=` (template.py):
    # hermes (one JSON object per <tool_call> block) or smollm2 (the JSON-list format
    # SmolLM2-Instruct was tuned on, with a worked example; the embedded default).
    tool_prompt: Literal["hermes", "smollm2"] = "hermes"
    api_key_env: Str | None = None  # the *name* of the env var holding the key
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: Annotated[int, Field(gt=0)] = 1024
    seed: int | None = None
    stop: list[Str] | None = None
    request_timeout: Annotated[float, Field(gt=0)] = 300.0
    max_retries: Annotated[int, Field(ge=0)] = 3
    max_connections: Annotated[int, Field(ge=1)] = 64
    responses: list[Str] = Field(default_factory=list)  # scripted
    simulated: SimulatedSettings = Field(default_factory=SimulatedSettings)

    @field_validator("base_url")
    @classmethod
    def _endpoint_needs_url(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind in _NEEDS_URL and not value:
            raise ValueError(f"is needed by policy.type={kind}: set it to the server's URL, "
                             "e.g. http://host:8000")
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_is_set(cls, value: str) -> str:
        if not value:
            raise ValueError("is empty; set it to the model's tokenizer (a local dir)")
        return value


def make_policy(cfg: PolicyConfig, env: Any | None = None) -> TokenPolicy:
    """Build the client for `cfg.type`. `env` (a TaskEnv) is needed only by `gold`."""
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.chat_template)
    renderer = ChatRenderer(tokenizer, cfg.template_kwargs, cfg.tool_prompt)
    if cfg.type in ("openai_completions", "embedded"):
        from rollout.policy.completions import CompletionsPolicy, EmbeddedPolicy

        return (EmbeddedPolicy if cfg.type == "embedded" else CompletionsPolicy)(cfg, renderer)
    if cfg.type == "sglang":
        from rollout.policy.sglang import SGLangPolicy

        return SGLangPolicy(cfg, renderer)
    if cfg.type == "openai_chat":
        from rollout.policy.chat import ChatPolicy

        return ChatPolicy(cfg, renderer)
    if cfg.type == "simulated":
        from rollout.policy.simulated import SimulatedPolicy

        return SimulatedPolicy(cfg, renderer)
    from rollout.policy.replay import GoldPolicy, ScriptedPolicy

    if cfg.type == "gold":
        return GoldPolicy(cfg, renderer, env)
    return ScriptedPolicy(cfg, renderer)


__all__ = [
    "ChatRenderer", "PolicyConfig", "TokenConversation", "TokenPolicy", "load_tokenizer", "make_policy",
]
