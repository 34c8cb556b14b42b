"""Reuse of finished sequences' KV caches for later prompts that share a prefix.

An agent's next turn is its previous prompt + the sampled reply + a tool-response suffix, and
the trajectories of a group share their opening prompt. Prefilling only what is new turns a
turn's cost from O(history) into O(new tokens). Keys are absolute-position token prefixes, so
a cached KV slice is exactly what a fresh prefill of those tokens would compute (up to float
noise of a different matmul shape, ~1e-5 in logits).

Not thread-safe: used only from the engine's worker thread. Bounded by `max_tokens` in total;
least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, H, T, D]


class PrefixCache:
    def __init__(self, max_tokens: int = 32768, min_match: int = 16) -> None:
        self.max_tokens = max_tokens
        self.min_match = min_match  # shorter matches are not worth a copy
        self._entries: OrderedDict[int, tuple[torch.Tensor, KV]] = OrderedDict()
        self._next_id = 0
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def put(self, ids: list[int], kv: KV) -> None:
        """Remember the KV of `ids` (tensors are copied; the batch's buffers may be reused)."""
        if len(ids) < self.min_match or len(ids) > self.max_tokens or self.max_tokens <= 0:
            return
        key = torch.tensor(ids, dtype=torch.long)
        # A stored entry that is a prefix of this one is now redundant.
        for entry_id, (other, _) in list(self._entries.items()):
            if len(other) <= len(key) and torch.equal(other, key[: len(other)]):
                self._remove(entry_id)
        self._entries[self._next_id] = (key, [(k.clone(), v.clone()) for k, v in kv])
        self._next_id += 1
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            self._remove(next(iter(self._entries)))

    def longest_prefix(self, prompt: list[int]) -> tuple[int, KV | None]:
        """(n, kv) for the longest cached prefix of `prompt`, leaving at least one token to
        prefill; kv is cropped to n tokens. (0, None) when nothing useful matches."""
        if not self._entries:
            return 0, None
        query = torch.tensor(prompt, dtype=torch.long)
        best_n, best_id = 0, None
        for entry_id, (key, _) in self._entries.items():
            span = min(len(key), len(query) - 1)
            if span <= best_n:
                continue
            differs = (key[:span] != query[:span]).nonzero()
            n = int(differs[0]) if len(differs) else span
            if n > best_n:
                best_n, best_id = n, entry_id
        if best_id is None or best_n < self.min_match:
            return 0, None
        self._entries.move_to_end(best_id)
        _, kv = self._entries[best_id]
        self.hits += 1
        self.reused_tokens += best_n
        return best_n, [(k[:, :, :best_n], v[:, :, :best_n]) for k, v in kv]

    def _remove(self, entry_id: int) -> None:
        key, _ = self._entries.pop(entry_id)
        self.tokens -= len(key)
