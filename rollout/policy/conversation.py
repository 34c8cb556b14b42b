"""`TokenConversation`: one trajectory's token-exact record, shared by every policy client.

Guarantees (what a trainer can rely on):
- `record().tokens` is the rendered prompt, then for each turn the ids the policy returned
  (verbatim, never re-tokenized), then the tokenized template suffix of each batch of tool
  results, in that order;
- `masks` is -100 on prompt and suffix positions and the token id on sampled positions;
  `logprobs` is 1.0 on masked positions and the returned logprob on sampled ones (0.0 when
  the policy gives none, with `logprobs_available` False); all three have equal length;
- a failed or timed-out `sample` leaves the record exactly as it was.

A conversation is used by one agent loop at a time (not concurrently).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.types import Completion, PolicyError, Task, TokenRecord, ToolCall

if TYPE_CHECKING:
    from rollout.policy import PolicyConfig
    from rollout.policy.template import ChatRenderer

log = logging.getLogger(__name__)

MASKED = -100
MASKED_LOGPROB = 1.0
MISSING_LOGPROB = 0.0
PROMPT_CACHE = 64  # distinct prompts remembered per policy (a few groups in flight each)


@dataclass
class Generation:
    """What a policy backend returns for one turn."""

    token_ids: list[int]
    logprobs: list[float] | None  # None: the endpoint gives none (chat, gold, scripted)
    finish_reason: str = "stop"
    tool_calls: list[ToolCall] | None = None  # when the endpoint parsed them itself
    api_message: dict[str, Any] | None = None  # the assistant message as the API returned it


class TokenConversation:
    def __init__(
        self,
        policy: TokenPolicy,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        task: Task,
    ) -> None:
        self.policy = policy
        self.renderer = policy.renderer
        self.tools = tools
        self.task = task
        self.turns = 0
        self.index = next(policy._opened)  # which conversation of this policy (seeding)
        # What a chat API is sent (assistant turns keep their structured tool_calls there).
        self.api_messages: list[dict[str, Any]] = copy.deepcopy(messages)
        prompt = policy.prompt_ids(messages, tools)
        self._record = TokenRecord(
            tokens=list(prompt),
            masks=[MASKED] * len(prompt),
            logprobs=[MASKED_LOGPROB] * len(prompt),
            messages=copy.deepcopy(messages),
        )
        self._last_sampled: list[int] = []

    @property
    def num_tokens(self) -> int:
        return len(self._record.tokens)

    def token_ids(self) -> list[int]:
        """A copy of the tokens so far: the next request's prompt."""
        return list(self._record.tokens)

    def record(self) -> TokenRecord:
        return copy.deepcopy(self._record)

    async def sample(self, *, timeout: float, max_tokens: int | None = None) -> Completion:
        limit = self.policy.cfg.max_tokens
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        if limit <= 0:
            raise PolicyError("no room left to sample: max_tokens is 0")
        async with asyncio.timeout(timeout):
            gen = await self.policy.generate(self, limit)
        ids = _checked_ids(gen.token_ids)
        if gen.logprobs is not None and len(gen.logprobs) != len(ids):
            raise PolicyError(
                f"policy returned {len(ids)} token ids but {len(gen.logprobs)} logprobs"
            )
        text = self.renderer.assistant_text(ids)
        rec = self._record
        rec.tokens.extend(ids)
        rec.masks.extend(ids)
        if gen.logprobs is None:
            rec.logprobs_available = False
            rec.logprobs.extend([MISSING_LOGPROB] * len(ids))
        else:
            rec.logprobs.extend(float(x) for x in gen.logprobs)
        rec.messages.append({"role": "assistant", "content": text})
        self.api_messages.append(gen.api_message or {"role": "assistant", "content": text})
        self._last_sampled = ids
        self.turns += 1
        return Completion(
            text=text,
            token_ids=list(ids),
            logprobs=list(gen.logprobs) if gen.logprobs is not None else [],
            finish_reason=gen.finish_reason,
            tool_calls=gen.tool_calls,
        )

    def add_tool_results(self, messages: list[dict[str, Any]]) -> None:
        rec = self._record
        if not rec.messages or rec.messages[-1].get("role") != "assistant":
            raise RuntimeError("add_tool_results must follow a sampled assistant turn")
        suffix = self.renderer.tool_suffix_ids(
            rec.messages[:-1], self.tools, messages, self._last_sampled
        )
        rec.tokens.extend(suffix)
        rec.masks.extend([MASKED] * len(suffix))
        rec.logprobs.extend([MASKED_LOGPROB] * len(suffix))
        rec.messages.extend(copy.deepcopy(messages))
        self.api_messages.extend(copy.deepcopy(messages))
        self._last_sampled = []


class TokenPolicy:
    """Base of every policy client: owns the renderer; subclasses implement `generate`."""

    name = "policy"
    logprobs_available = True

    def __init__(self, cfg: PolicyConfig, renderer: ChatRenderer) -> None:
        self.cfg = cfg
        self.renderer = renderer
        self._opened = itertools.count()
        self._prompts: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
        """The rendered, tokenized prompt. Remembered for the last few distinct prompts: the
        trajectories of one group share theirs, and rendering plus tokenizing it is most of
        a short trajectory's client-side CPU."""
        key = json.dumps([messages, tools], sort_keys=True, default=str)
        ids = self._prompts.get(key)
        if ids is None:
            ids = tuple(self.renderer.prompt_ids(messages, tools))
            self._prompts[key] = ids
            if len(self._prompts) > PROMPT_CACHE:
                self._prompts.popitem(last=False)
        else:
            self._prompts.move_to_end(key)
        return list(ids)

    def turn_seed(self, conv: TokenConversation) -> int | None:
        """A per-conversation, per-turn seed from `cfg.seed`, or None when unseeded.

        Trajectories of one group must not share seeds: identical samples would make the
        group's scores equal and its advantages zero.
        """
        if self.cfg.seed is None:
            return None
        return (self.cfg.seed + 1_000_003 * conv.index + conv.turns) % (2**31)

    def open(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], task: Task
    ) -> TokenConversation:
        return TokenConversation(self, messages, tools, task)

    async def generate(self, conv: TokenConversation, max_tokens: int) -> Generation:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def task_env(self, env: Any) -> Any:
        """The TaskEnv this policy's trajectories are prepared and scored by: `env` itself,
        except for a policy that stands in for grading too (`simulated`)."""
        return env

    def generation_params(self) -> dict[str, Any]:
        """Sampling parameters, for the trainer's `generation_params`."""
        c = self.cfg
        return {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens}


def _checked_ids(ids: Any) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise PolicyError("policy returned token ids that are not a list of non-negative ints")
    return ids
