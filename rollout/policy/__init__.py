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

from pydantic import Field, field_validator

from rollout.config_model import KindSection, Str
from rollout.policy.conversation import TokenConversation, TokenPolicy
from rollout.policy.registry import PolicyKind, names, policy_kind, register
from rollout.policy.simulated import SimulatedSettings
from rollout.policy.template import ChatRenderer, load_tokenizer


class PolicyConfig(KindSection):
    """The settings every policy type has; a type's own keys are on its model (registered
    with it, see rollout/policy/registry.py), chosen by `type`."""

    section: ClassVar[str] = "policy"
    default_kind: ClassVar[str] = "openai_completions"

    type: Str = "openai_completions"
    base_url: Str = ""
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

    @classmethod
    def kinds(cls) -> dict[str, type[KindSection]]:
        return {name: policy_kind(name).settings for name in names()}

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_is_set(cls, value: str) -> str:
        if not value:
            raise ValueError("is empty; set it to the model's tokenizer (a local dir)")
        return value

    @property
    def kind(self) -> PolicyKind:
        """What this policy type is (its registry entry)."""
        return policy_kind(self.type)


class EndpointPolicyConfig(PolicyConfig):
    """A client of a server someone else runs: `base_url` is required."""

    base_url: Annotated[Str, Field(validate_default=True)] = ""

    @field_validator("base_url")
    @classmethod
    def _endpoint_needs_url(cls, value: str) -> str:
        if not value:
            raise ValueError(f"is needed by policy.type={cls.model_fields['type'].default}: set "
                             "it to the server's URL, e.g. http://host:8000")
        return value


class CompletionsPolicyConfig(EndpointPolicyConfig):
    type: Literal["openai_completions"] = "openai_completions"


class SGLangPolicyConfig(EndpointPolicyConfig):
    type: Literal["sglang"] = "sglang"


class ChatPolicyConfig(EndpointPolicyConfig):
    type: Literal["openai_chat"] = "openai_chat"


class EmbeddedPolicyConfig(PolicyConfig):
    """The bundled model, served by launch itself (base_url is filled in once it is up)."""

    type: Literal["embedded"] = "embedded"


class GoldPolicyConfig(PolicyConfig):
    type: Literal["gold"] = "gold"


class ScriptedPolicyConfig(PolicyConfig):
    type: Literal["scripted"] = "scripted"
    responses: list[Str] = Field(default_factory=list)  # the assistant's turns, in order


class SimulatedPolicyConfig(PolicyConfig):
    type: Literal["simulated"] = "simulated"
    simulated: SimulatedSettings = Field(default_factory=SimulatedSettings)


def make_policy(cfg: PolicyConfig, env: Any | None = None) -> TokenPolicy:
    """Build the client for `cfg.type`. `env` (a TaskEnv) is needed only by `gold`."""
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.chat_template)
    renderer = ChatRenderer(tokenizer, cfg.template_kwargs, cfg.tool_prompt)
    return cfg.kind.make(cfg, renderer, env)


# --- the built-in types (each client imported only when built) ------------------------------

def _completions(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.completions import CompletionsPolicy

    return CompletionsPolicy(cfg, renderer)


def _embedded(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.completions import EmbeddedPolicy

    return EmbeddedPolicy(cfg, renderer)


def _embedded_server(log_file: Any, host: str) -> Any:
    from rollout.policy.embedded.launcher import EmbeddedServerProcess

    return EmbeddedServerProcess(log_file=log_file, host=host)


def _sglang(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.sglang import SGLangPolicy

    return SGLangPolicy(cfg, renderer)


def _chat(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.chat import ChatPolicy

    return ChatPolicy(cfg, renderer)


def _gold(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.replay import GoldPolicy

    return GoldPolicy(cfg, renderer, env)


def _scripted(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.replay import ScriptedPolicy

    return ScriptedPolicy(cfg, renderer)


def _simulated(cfg: Any, renderer: ChatRenderer, env: Any) -> TokenPolicy:
    from rollout.policy.simulated import SimulatedPolicy

    return SimulatedPolicy(cfg, renderer)


register(PolicyKind("openai_completions", CompletionsPolicyConfig, _completions,
                    probe_path="/v1/models"))
register(PolicyKind("sglang", SGLangPolicyConfig, _sglang, probe_path="/health"))
register(PolicyKind("openai_chat", ChatPolicyConfig, _chat, probe_path="/v1/models"))
register(PolicyKind("gold", GoldPolicyConfig, _gold, local_tokenizer=True, reference=True))
register(PolicyKind("scripted", ScriptedPolicyConfig, _scripted, local_tokenizer=True))
register(PolicyKind("embedded", EmbeddedPolicyConfig, _embedded, probe_path="/v1/models",
                    serve=_embedded_server, local_tokenizer=True))
register(PolicyKind("simulated", SimulatedPolicyConfig, _simulated, local_tokenizer=True))


__all__ = [
    "ChatRenderer", "PolicyConfig", "PolicyKind", "TokenConversation", "TokenPolicy",
    "load_tokenizer", "make_policy", "register",
]
