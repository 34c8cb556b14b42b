"""Policies that replay known text instead of sampling: `gold` and `scripted`.

Both go through exactly the same path as a sampled turn: the text is tokenized with the
chat template's tokenizer (plus the end-of-turn token), appended to the record, parsed for
tool calls and executed by the agent. Logprobs are unavailable and marked so.

- `gold` replays `env.reference_solution(task)`: one Hermes `<tool_call>` per turn, then a
  final turn without a call. It validates an environment end to end. A turn that does not
  fit the token limit is a task error (`PolicyError`, never graded), not a cut call.
- `scripted` replays `PolicyConfig.responses` (the same list for every conversation); asking
  for a turn past the end is a PolicyError, which tests use as a policy failure.
"""

from __future__ import annotations

from typing import Any

from rollout.policy.conversation import Generation, TokenConversation, TokenPolicy
from rollout.agent.toolcalls import format_hermes_call
from rollout.types import PolicyError, Task

GOLD_FINAL_MESSAGE = "I have applied the reference solution."


class ReplayPolicy(TokenPolicy):
    logprobs_available = False

    def script_for(self, task: Task) -> list[str]:
        raise NotImplementedError

    def open(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], task: Task
    ) -> TokenConversation:
        conv = super().open(messages, tools, task)
        conv.script = self.script_for(task)  # type: ignore[attr-defined]
        return conv

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        script: list[str] = conv.script  # type: ignore[attr-defined]
        if conv.turns >= len(script):
            raise PolicyError(
                f"{self.name} policy has no response for turn {conv.turns + 1} "
                f"(it has {len(script)})"
            )
        ids = self.renderer.encode(script[conv.turns]) + self.renderer.turn_closing_ids()
        finish = "stop"
        if len(ids) > max_tokens:  # behave like a sampler that hit its token limit
            ids, finish = ids[:max_tokens], "length"
        return Generation(token_ids=ids, logprobs=None, finish_reason=finish)


class ScriptedPolicy(ReplayPolicy):
    name = "scripted"

    def script_for(self, task: Task) -> list[str]:
        return list(self.cfg.responses or [])


class GoldPolicy(ReplayPolicy):
    name = "gold"

    def __init__(self, cfg: Any, renderer: Any, env: Any) -> None:
        super().__init__(cfg, renderer)
        if env is None:
            raise ValueError("policy type 'gold' needs the task environment (make_policy(cfg, env))")
        self.env = env

    def script_for(self, task: Task) -> list[str]:
        calls = self.env.reference_solution(task)
        return [format_hermes_call(c) for c in calls] + [GOLD_FINAL_MESSAGE]

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        out = await super().generate(conv, max_tokens)
        if out.finish_reason == "length":
            # A cut tool call would not parse: the agent would stop and the task would be
            # graded as if the solution did nothing (a 0.0 that blames the model).
            full = len(self.renderer.encode(conv.script[conv.turns]))  # type: ignore[attr-defined]
            raise PolicyError(
                f"task error: the gold solution's turn {conv.turns + 1} is {full} tokens, over "
                f"the {max_tokens} this turn may take (policy.max_tokens, and the room left in "
                f"agent.max_context_tokens): raise them, or shorten the solution")
        return out
