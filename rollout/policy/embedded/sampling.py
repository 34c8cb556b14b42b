"""Sampling parameters and the per-row sampler of the embedded engine.

Logprob semantics (what every returned logprob means):

    logprob(token) = log_softmax(logits / T)[token]     with T = temperature, or T = 1 if T == 0

taken over the full vocabulary, *before* top_p / top_k truncation. That is the log-probability
of the token under the tempered policy a trainer recomputes (teacher-forced logits divided by
the same temperature), independent of truncation. Greedy decoding (temperature 0) reports the
untempered log_softmax(logits). Top-logprob alternatives come from the same distribution.
(vLLM V1 by default reports the untempered distribution; at temperature 1.0 the two agree.)
Logits are float32 from a float32 model, so a trainer's float32 recomputation agrees to ~1e-5.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch


class InvalidRequest(ValueError):
    """The request's parameters are invalid (the server answers 400 with this message)."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    top_logprobs: int = 0  # alternatives per position, besides the sampled token
    skip_special_tokens: bool = True  # for the returned text only; token ids are always complete

    def validate(self) -> SamplingParams:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 100.0:
            raise InvalidRequest(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise InvalidRequest(f"top_k must be -1 (disabled) or a positive integer, got {self.top_k!r}")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= 20:
            raise InvalidRequest(f"logprobs must be an integer in [0, 20], got {self.top_logprobs!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequest("stop must be a non-empty string or a list of non-empty strings")
        if not all(isinstance(t, int) for t in self.stop_token_ids):
            raise InvalidRequest("stop_token_ids must be a list of integers")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequest(f"seed must be an integer, got {self.seed!r}")
        return self


class RowSampler:
    """Samples one sequence's tokens with its own seeded generator (reproducible per request)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> tuple[int, float, dict[int, float] | None]:
        """Pick a token from one row of logits [V]; return (id, logprob, top alternatives)."""
        p = self.params
        logits = logits.float()
        greedy = p.temperature == 0.0
        scaled = logits if greedy else logits / p.temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        if greedy:
            token = int(torch.argmax(logprobs))
        else:
            token = self._draw(logprobs)
        top: dict[int, float] | None = None
        if p.top_logprobs:
            values, ids = torch.topk(logprobs, p.top_logprobs)
            top = {int(i): float(v) for i, v in zip(ids, values)}
            top[token] = float(logprobs[token])
        return token, float(logprobs[token]), top

    def _draw(self, logprobs: torch.Tensor) -> int:
        p = self.params
        probs = logprobs.exp()
        if p.top_k and p.top_k > 0 and p.top_k < probs.numel():
            kth = torch.topk(probs, p.top_k).values[-1]
            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = cumulative - sorted_probs >= p.top_p * cumulative[-1]
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def params_from_request(body: dict[str, Any], *, default_max_tokens: int = 16) -> SamplingParams:
    """Build SamplingParams from an OpenAI/vLLM-style request body (unknown keys ignored)."""
    stop = body.get("stop") or []
    logprobs = body.get("logprobs")
    if logprobs is True:  # chat style: logprobs=true, top_logprobs=N
        logprobs = body.get("top_logprobs") or 0
    elif logprobs is None or logprobs is False:
        logprobs = body.get("top_logprobs") or 0
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens", default_max_tokens)
    try:
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0),
            top_p=float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0),
            top_k=body.get("top_k", -1) if body.get("top_k") is not None else -1,
            stop=[stop] if isinstance(stop, str) else list(stop),
            stop_token_ids=list(body.get("stop_token_ids") or []),
            seed=body.get("seed"),
            ignore_eos=bool(body.get("ignore_eos", False)),
            include_stop_str_in_output=bool(body.get("include_stop_str_in_output", False)),
            top_logprobs=logprobs,
            skip_special_tokens=bool(body.get("skip_special_tokens", True)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"bad sampling parameter: {exc}") from None
    return params.validate()
