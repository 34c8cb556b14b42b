"""Atropos pacing and drop rules, as pure functions.

The drop rules mirror what Atropos's own env client discards silently; we apply them before
sending so every drop is counted with its reason instead.
"""

from __future__ import annotations

from typing import Any


def drop_reason(
    group: dict[str, Any],
    *,
    group_size: int,
    max_token_len: int | None,
    ensure_scores_are_not_same: bool,
) -> str | None:
    """Why this ScoredDataGroup must not be sent, or None if it is fine."""
    tokens = group.get("tokens") or []
    scores = group.get("scores") or []
    if len(tokens) != group_size or len(scores) != group_size:
        return "wrong_group_size"
    masks = group.get("masks") or []
    logprobs = group.get("inference_logprobs")
    if len(masks) != len(tokens) or any(len(m) != len(t) for m, t in zip(masks, tokens)):
        return "misaligned_masks"
    if logprobs is not None and (
        len(logprobs) != len(tokens) or any(len(lp) != len(t) for lp, t in zip(logprobs, tokens))
    ):
        return "misaligned_logprobs"
    if ensure_scores_are_not_same and len(set(scores)) <= 1:
        return "all_scores_equal"
    if max_token_len is not None and max_token_len > 0:
        if any(len(t) >= max_token_len for t in tokens):
            return "too_long"
    return None


def should_pause(
    *, queue_size: int, group_size: int, batch_size: int, max_batches_offpolicy: int
) -> bool:
    """Atropos's rule: stop starting new groups once the trainer's queue holds enough.

    queue_size is counted in groups of this env's group_size (GET /status-env).
    """
    if batch_size <= 0:
        return False
    return queue_size * group_size >= max_batches_offpolicy * batch_size
