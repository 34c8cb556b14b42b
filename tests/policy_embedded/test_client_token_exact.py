"""The agent core's token-in/token-out client against the real embedded server.

Runs the agent core's own token-exactness checks (tests/policy/test_token_exact.py) on a real
model, then a scripted multi-turn conversation whose whole record is recomputed by a trainer-
style teacher-forced forward: every sampled position's logprob must match within 1e-3.
"""

from __future__ import annotations

import torch

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.agent.tools import TOOL_SCHEMAS
from rollout.types import Task
from tests.agent_support import DirSandbox
from tests.policy.test_token_exact import MESSAGES, check_exact, run_recorded

MASKED = -100


def _policy(base_url: str, checkpoint, **overrides):
    cfg = PolicyConfig(type="embedded", base_url=base_url, tokenizer=str(checkpoint), max_tokens=32, seed=1,
                       **overrides)  # fmt: skip
    return make_policy(cfg)


class RenderedTokenizer:
    """The tokenizer as `check_exact` uses it, but rendering chats the way the policy does
    (SmolLM2's template ignores tools, so the renderer describes them in the system message)."""

    def __init__(self, renderer) -> None:
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer

    def apply_chat_template(self, messages, *, tools=None, tokenize=False, add_generation_prompt=True):
        assert not tokenize
        return self.renderer.render(messages, tools, add_generation_prompt=add_generation_prompt)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


async def test_agent_core_token_exactness_checks_pass(base_url, checkpoint, tmp_path):
    policy = _policy(base_url, checkpoint)
    cfg = AgentConfig(max_turns=3, max_context_tokens=8192, llm_timeout=280)
    try:
        traj, calls = await run_recorded(policy, DirSandbox(tmp_path), cfg)
    finally:
        await policy.close()
    assert traj.error is None, traj.error
    assert calls, "the agent never asked the policy"
    check_exact(traj, calls, RenderedTokenizer(policy.renderer))


async def test_multi_turn_record_matches_teacher_forced_recomputation(base_url, checkpoint, reference):
    policy = _policy(base_url, checkpoint, temperature=0.7)
    conv = policy.open(MESSAGES, TOOL_SCHEMAS, Task("t-embedded", "test", "x"))
    try:
        for turn in range(3):
            completion = await conv.sample(timeout=280, max_tokens=16)
            assert completion.token_ids and len(completion.logprobs) == len(completion.token_ids)
            if turn < 2:
                conv.add_tool_results(
                    [{"role": "tool", "name": "bash", "tool_call_id": f"c{turn}", "content": f"output {turn}"}]
                )
    finally:
        await policy.close()
    rec = conv.record()
    assert len(rec.tokens) == len(rec.masks) == len(rec.logprobs)
    sampled = [i for i, m in enumerate(rec.masks) if m != MASKED]
    assert len(sampled) >= 3
    # Observations really sit between the turns (3 sampled spans separated by masked ones).
    spans = sum(1 for i in sampled if i - 1 not in sampled)
    assert spans == 3
    with torch.inference_mode():
        logits = reference.model(input_ids=torch.tensor([rec.tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits / 0.7, dim=-1)
    for i in sampled:
        assert rec.masks[i] == rec.tokens[i]
        assert abs(rec.logprobs[i] - float(logprobs[i - 1, rec.tokens[i]])) < 1e-3
    for i, m in enumerate(rec.masks):
        if m == MASKED:
            assert rec.logprobs[i] == 1.0
