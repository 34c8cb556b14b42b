"""Continuous batching for the embedded model on CPU.

`BatchedEngine.generate(prompt_ids, params)` may be called concurrently from any number of
coroutines. Guarantees:

- Requests decode together: each decode step runs one forward pass over every active
  sequence. A request that arrives while others decode joins at the next step (its prompt is
  prefilled alone, then its KV cache is merged into the running batch with left padding); a
  finished sequence leaves at once. At most `max_batch_size` sequences decode together; the
  rest wait in FIFO order.
- Batching does not change results beyond float noise: every row has its own attention mask
  (padding masked out) and its own position ids, so a sequence's logits equal those of a
  batch-1 forward within ~1e-5. Sampling uses a per-request generator (seeded if `seed`).
- The event loop stays responsive: all torch work runs in one dedicated worker thread.
- A request whose caller is cancelled is dropped from the batch at the next step. An internal
  error fails the requests of the affected step with `EngineError`; the engine keeps serving.

Logprob semantics are documented in `sampling.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .model import LoadedModel
from .prefix_cache import PrefixCache
from .sampling import InvalidRequest, RowSampler, SamplingParams

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """Generation failed inside the engine (the server answers 500)."""


@dataclass
class GenerationResult:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    top_logprobs: list[dict[int, float]] | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it


@dataclass
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    max_new: int
    future: asyncio.Future[GenerationResult]
    sampler: RowSampler
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    result: GenerationResult | None = None


class BatchedEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 8,
        max_context: int | None = None,
        prefix_cache_tokens: int = 32768,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_batch_size = max_batch_size
        self.max_context = max_context or int(self.model.config.max_position_embeddings)
        self.eos_ids = loaded.eos_token_ids
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._waiting: list[_Sequence] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-engine")
        self._loop_task: asyncio.Task[None] | None = None
        # Batch state; touched only by the worker thread.
        self._rows: list[_Sequence] = []
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._mask: torch.Tensor | None = None  # [B, T] long, 1 = real token
        self._pending: list[int] = []  # per row: sampled token not yet fed through the model
        self.steps = 0  # decode steps run (for stats and tests)
        self.max_batch_seen = 0

    # --- public API -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="embedded-engine")

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)  # lets a running step finish; no new ones start
        for seq in self._waiting + self._rows:
            if not seq.future.done():
                seq.future.set_exception(EngineError("the embedded engine stopped"))
        self._waiting.clear()
        self._reset_batch()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        if self._loop_task is None:
            raise EngineError("engine not started: call await engine.start() first")
        params.validate()
        vocab = int(self.model.config.vocab_size)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt_ids):
            raise InvalidRequest(f"prompt token ids must be integers in [0, {vocab})")
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise InvalidRequest(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.max_context} tokens. Shorten the prompt."
            )
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        seq = _Sequence(
            prompt=list(prompt_ids),
            params=params,
            max_new=min(params.max_tokens, room),
            future=future,
            sampler=RowSampler(params),
        )
        self._waiting.append(seq)
        self._wakeup.set()
        return await future

    @property
    def active(self) -> int:
        return len(self._rows)

    # --- scheduler (event loop side) ------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._rows and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._waiting = [s for s in self._waiting if not s.future.done()]
            room = self.max_batch_size - len(self._rows)
            admitted, self._waiting = self._waiting[:room], self._waiting[room:]
            try:
                finished = await loop.run_in_executor(self._executor, self._step, admitted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # fail this step's requests, keep serving
                log.exception("embedded engine step failed")
                for seq in self._rows + admitted:
                    if not seq.future.done():
                        seq.future.set_exception(EngineError(f"generation failed: {exc}"))
                self._reset_batch()
                continue
            for seq in finished:
                if not seq.future.done():
                    assert seq.result is not None
                    seq.future.set_result(seq.result)
            await asyncio.sleep(0)  # let new requests enqueue between steps

    # --- torch work (worker thread) -------------------------------------------------------------

    @torch.inference_mode()
    def _step(self, admitted: list[_Sequence]) -> list[_Sequence]:
        """Admit new sequences, run one decode step; return the sequences that finished."""
        self._drop(lambda s: s.future.done())  # cancelled callers
        for seq in admitted:
            self._prefill(seq)
        self._remember_finished()
        finished = self._drop(lambda s: s.result is not None)
        if self._rows:
            self._decode()
            self._remember_finished()
            finished += self._drop(lambda s: s.result is not None)
        return finished

    def _prefill(self, seq: _Sequence) -> None:
        from transformers import DynamicCache

        reused, kv = self.prefix_cache.longest_prefix(seq.prompt)
        past = DynamicCache(ddp_cache_data=kv) if kv is not None else None
        ids = torch.tensor([seq.prompt[reused:]], dtype=torch.long)
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=1)
        cache = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._merge(seq, cache, len(seq.prompt))
        self._accept(len(self._rows) - 1, out.logits[0, -1])

    def _decode(self) -> None:
        from transformers import DynamicCache

        assert self._cache is not None and self._mask is not None
        positions = self._mask.sum(dim=1, keepdim=True)  # real tokens so far = next position
        self._mask = torch.cat([self._mask, torch.ones_like(positions)], dim=1)
        ids = torch.tensor(self._pending, dtype=torch.long).unsqueeze(1)
        cache = DynamicCache(ddp_cache_data=self._cache)
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        self._cache = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.steps += 1
        self.max_batch_seen = max(self.max_batch_seen, len(self._rows))
        for row in range(len(self._rows)):
            self._accept(row, out.logits[row, -1])

    def _accept(self, row: int, logits: torch.Tensor) -> None:
        """Sample the next token of one row and decide whether the row is finished."""
        seq = self._rows[row]
        token, logprob, top = seq.sampler.sample(logits)
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        if top is not None:
            seq.top.append(top)
        self._pending[row] = token
        self._check_finished(seq, token)

    def _check_finished(self, seq: _Sequence, token: int) -> None:
        p = seq.params
        if token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos):
            self._finish(seq, "stop", stop_reason=token if token in p.stop_token_ids else None)
            return
        if p.stop:
            text = self._decode_text(seq.tokens, p)
            # Only the tail can hold a new match; earlier text was checked at earlier steps.
            newest = len(self._decode_text(seq.tokens[-1:], p))
            tail_from = max(0, len(text) - newest - max(map(len, p.stop)))
            hits = [(text.find(s, tail_from), s) for s in p.stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                at, stop = min(hits)
                cut = at + len(stop) if p.include_stop_str_in_output else at
                self._finish(seq, "stop", text=text[:cut], stop_reason=stop)
                return
        if len(seq.tokens) >= seq.max_new:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str, *, text: str | None = None, stop_reason=None) -> None:
        seq.result = GenerationResult(
            token_ids=list(seq.tokens),
            logprobs=list(seq.logprobs),
            text=self._decode_text(seq.tokens, seq.params) if text is None else text,
            finish_reason=reason,
            prompt_tokens=len(seq.prompt),
            top_logprobs=list(seq.top) if seq.params.top_logprobs else None,
            stop_reason=stop_reason,
        )

    def _remember_finished(self) -> None:
        """Keep the KV of rows that just finished, for later prompts that extend them."""
        if self.prefix_cache.max_tokens <= 0 or self._cache is None or self._mask is None:
            return
        for row, seq in enumerate(self._rows):
            if seq.result is None:
                continue
            # The cache holds the prompt and every sampled token except the last (never fed).
            ids = seq.prompt + seq.tokens[:-1]
            real = int(self._mask[row].sum())
            if real != len(ids):  # bookkeeping disagrees: never store a wrong cache
                log.warning("prefix cache: row length %d != %d tokens; not cached", real, len(ids))
                continue
            start = self._mask.shape[1] - real
            self.prefix_cache.put(ids, [(k[row : row + 1, :, start:], v[row : row + 1, :, start:]) for k, v in self._cache])

    def _decode_text(self, ids: list[int], params: SamplingParams) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)

    # --- batch bookkeeping (worker thread) ------------------------------------------------------

    def _merge(self, seq: _Sequence, cache: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Append one prefilled sequence to the batch, left-padding whichever side is shorter."""
        new_mask = torch.ones((1, length), dtype=torch.long)
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, new_mask
        else:
            width = max(self._mask.shape[1], length)
            merged = []
            for (bk, bv), (nk, nv) in zip(self._cache, cache):
                merged.append(
                    (
                        torch.cat([_left_pad(bk, width), _left_pad(nk, width)], dim=0),
                        torch.cat([_left_pad(bv, width), _left_pad(nv, width)], dim=0),
                    )
                )
            self._cache = merged
            self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(new_mask, width)], dim=0)
        self._rows.append(seq)
        self._pending.append(-1)

    def _drop(self, leaving: Callable[[_Sequence], bool]) -> list[_Sequence]:
        """Remove the rows for which `leaving` is true; return them."""
        keep = [i for i, s in enumerate(self._rows) if not leaving(s)]
        gone = [s for s in self._rows if leaving(s)]
        if not gone:
            return []
        if not keep:
            self._reset_batch()
            return gone
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, dtype=torch.long)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row are dead weight: trim them.
        first = int(mask.any(dim=0).long().argmax())
        self._mask = mask[:, first:]
        self._cache = [
            (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
            for k, v in self._cache
        ]
        self._rows = [self._rows[i] for i in keep]
        self._pending = [self._pending[i] for i in keep]
        return gone

    def _reset_batch(self) -> None:
        self._rows, self._pending = [], []
        self._cache = self._mask = None


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-2 for KV tensors [B,H,T,D], -1 for masks [B,T]) with zeros."""
    axis = -1 if t.dim() == 2 else -2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)
