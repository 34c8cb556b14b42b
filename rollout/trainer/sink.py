"""GroupSink: where finished groups go. Drop rules, outbox, delivery, pacing. Ray-free.

Guarantees (tested in tests/trainer/ against the real atroposlib API server):
- Every submitted group ends as delivered, or dropped with a counted reason. A group is on
  disk (outbox) before `submit` returns; it is acknowledged there only after the trainer
  (or groups.jsonl, in jsonl mode) has it. A restarted sink sends what was not acknowledged
  before anything new.
- A second group for a task that already has one (a re-leased task whose first worker died
  after submitting) is dropped as a duplicate, never sent twice.
- `may_start()` is false while the trainer's queue is full by Atropos's rule; nothing in
  flight is ever cancelled by pacing.
- Transient API failures (down, 5xx, timeouts) only delay delivery (retried without limit,
  `trainer.retry_backoff` doubling up to 10 s, with jitter); after the API restarts (and
  forgets us) the sink registers again before sending. `close()` stops a wait at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from rollout.config_model import KindSection, Str

from rollout.retry import retrying
from rollout.trainer.atropos import AtroposClient, Registration, RejectedError, TransientError
from rollout.trainer.outbox import Outbox
from rollout.trainer.rules import drop_reason, should_pause

log = logging.getLogger(__name__)

META_KEY = "_meta"  # stored beside the group in the outbox / groups.jsonl; stripped on send
SINK_BACKOFF_MAX = 10.0  # seconds: the longest wait between two tries while the API is down


class TrainerConfig(KindSection):
    """Where finished groups go, by `trainer.type`: each type registers its settings model
    (`register`), the one place that says what the type needs (`api`: it delivers to the
    Atropos API, so the sink registers and paces; `preflight()`: what is checked before a
    run)."""

    section: ClassVar[str] = "trainer"
    default_kind: ClassVar[str] = "jsonl"
    # True: groups go to a trainer API (registration, pacing, retries), not only to disk.
    api: ClassVar[bool] = False

    type: Str = "jsonl"
    # Set from env.* by the cluster (a new TrainerConfig; see actors/cluster.py).
    env_name: Str = "swe_smith"
    weight: float = 1.0
    min_batch_allocation: float | None = None

    @classmethod
    def kinds(cls) -> dict[str, type[KindSection]]:
        return dict(_TRAINERS)

    def preflight(self) -> str | None:
        """Before a run: None if this trainer can take groups, else one line saying what to
        change (nothing to check for one that writes files only)."""
        return None


class JsonlTrainerConfig(TrainerConfig):
    """groups.jsonl in the run dir only (Atropos "process" mode): no API."""

    type: Literal["jsonl"] = "jsonl"


class AtroposTrainerConfig(TrainerConfig):
    """A running Atropos API (`run-api`) at `url`."""

    api: ClassVar[bool] = True

    type: Literal["atropos"] = "atropos"
    url: Str = "http://127.0.0.1:8000"
    status_interval: Annotated[float, Field(gt=0)] = 1.0
    register_poll: Annotated[float, Field(gt=0)] = 1.0
    send_batch: Annotated[int, Field(ge=1)] = 8
    request_timeout: Annotated[float, Field(gt=0)] = 30.0
    max_retries: Annotated[int, Field(ge=0)] = 3
    retry_backoff: Annotated[float, Field(ge=0)] = 0.5

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    def preflight(self) -> str | None:
        # Something must listen at url (the trainer itself may register later: the run
        # waits for that, visibly).
        from rollout.retry import probe_http

        problem = probe_http(self.url.rstrip("/") + "/")
        if problem:
            return (f"the Atropos API at trainer.url={self.url} is not reachable ({problem}); "
                    "start it first (`run-api`) or fix trainer.url")
        return None


_TRAINERS: dict[str, type[TrainerConfig]] = {}


def register(cls: type[TrainerConfig]) -> type[TrainerConfig]:
    """Register a trainer type's settings model under the default of its `type` field."""
    _TRAINERS[cls.model_fields["type"].default] = cls
    return cls


register(JsonlTrainerConfig)
register(AtroposTrainerConfig)


@dataclass
class GroupRules:
    """The env.* settings the sink needs (names as in Atropos's BaseEnvConfig)."""

    group_size: int
    batch_size: int = -1  # -1: take the trainer's
    max_batches_offpolicy: int = 3
    max_token_length: int = 8192
    ensure_scores_are_not_same: bool = False


class GroupSink:
    def __init__(self, run_dir: Path, trainer: TrainerConfig, rules: GroupRules) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = trainer
        self.rules = rules
        self.outbox = Outbox(self.run_dir / "outbox.jsonl")
        self._groups_fh = (self.run_dir / "groups.jsonl").open("a", encoding="utf-8")
        self.drops: collections.Counter[str] = collections.Counter()
        self.submitted = 0
        self.delivered = 0
        self.score_sum = 0.0
        self.score_n = 0
        self.registration: Registration | None = None
        self.paused = trainer.api  # until registered and the status is known
        self.api_up: bool | None = None
        self.last_status: dict[str, Any] = {}
        self._next_status = 0.0  # monotonic time of the next /status-env poll
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client = (
            AtroposClient(
                trainer.url,
                request_timeout=trainer.request_timeout,
                max_retries=trainer.max_retries,
                backoff=trainer.retry_backoff,
            )
            if trainer.api
            else None
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_loop(), name="sink-deliver")

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Try to deliver what is pending for up to `drain_timeout` s, then stop.

        Whatever is still undelivered stays in the outbox for the next run.
        """
        await self.drain(drain_timeout)
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._client is not None:
            await self._client.close()
        self.outbox.close()
        self._groups_fh.close()

    async def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.outbox) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        return not len(self.outbox)

    # -- intake -----------------------------------------------------------------------------

    def submit(self, task_id: str, group: dict[str, Any],
               meta: list[dict[str, Any]] | None = None) -> str:
        """Accept a group (durably) or drop it. Returns "accepted" or the drop reason.

        `meta` (per-trajectory outcome, score, timings, grading summary) is kept in the outbox
        and groups.jsonl for the user, never sent to the trainer.
        """
        self.submitted += 1
        if self.outbox.has_task(task_id):
            return self._drop(task_id, "duplicate")
        reason = drop_reason(
            group,
            group_size=self.rules.group_size,
            max_token_len=self._max_token_len(),
            ensure_scores_are_not_same=self.rules.ensure_scores_are_not_same,
        )
        if reason is not None:
            return self._drop(task_id, reason)
        self.outbox.append(task_id, group if meta is None else {**group, META_KEY: meta})
        for s in group.get("scores", []):
            self.score_sum += float(s)
            self.score_n += 1
        self._wake.set()
        return "accepted"

    def _drop(self, task_id: str, reason: str) -> str:
        self.drops[reason] += 1
        log.warning("group for task %s dropped: %s", task_id, reason)
        return reason

    def _max_token_len(self) -> int | None:
        if self.registration is not None and self.registration.max_token_len > 0:
            return self.registration.max_token_len
        return None

    # -- pacing -----------------------------------------------------------------------------

    def may_start(self) -> bool:
        return not self.paused

    def stats(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "delivered": self.delivered,
            "pending": len(self.outbox),
            "drops": dict(self.drops),
            "mean_score": self.score_sum / self.score_n if self.score_n else None,
            "paused": self.paused,
            # Before registration: whether the API answers at all (nothing listening reads
            # differently from "the trainer has not registered yet").
            "api_up": self.api_up if self.registration or self._client is None
            else self._client.reachable,
            "trainer_queue": self.last_status.get("queue_size"),
            "env_id": self.registration.env_id if self.registration else None,
        }

    # -- delivery ---------------------------------------------------------------------------

    def _write_groups(self, batch: list[tuple[int, str, dict[str, Any]]]) -> None:
        for seq, task_id, group in batch:
            line = json.dumps({"seq": seq, "task_id": task_id, **group}, separators=(",", ":"))
            self._groups_fh.write(line + "\n")
        self._groups_fh.flush()
        self.delivered += len(batch)

    async def _deliver_loop(self) -> None:
        if self._client is None:
            await self._jsonl_loop()
        else:
            await self._atropos_loop(self._client)

    async def _jsonl_loop(self) -> None:
        while not self._closing.is_set():
            batch = self.outbox.pending()
            if batch:
                self._write_groups(batch)
                self.outbox.mark_delivered([seq for seq, _, _ in batch])
            self._wake.clear()
            if not self.outbox.pending():
                await self._wake.wait()

    async def _register(self, client: AtroposClient) -> None:
        self.registration = await client.register_env(
            name=self.cfg.env_name,
            group_size=self.rules.group_size,
            max_token_length=self.rules.max_token_length,
            weight=self.cfg.weight,
            min_batch_allocation=self.cfg.min_batch_allocation,
            poll_interval=self.cfg.register_poll,
            stop=self._closing,
        )
        self.api_up = True

    def _batch_size(self) -> int:
        if self.rules.batch_size > 0:
            return self.rules.batch_size
        return self.registration.batch_size if self.registration else -1

    async def _poll_status(self, client: AtroposClient) -> None:
        assert self.registration is not None
        status = await client.status(self.registration.env_id)
        self.last_status = status
        self.paused = should_pause(
            queue_size=int(status.get("queue_size", 0)),
            group_size=self.rules.group_size,
            batch_size=self._batch_size(),
            max_batches_offpolicy=self.rules.max_batches_offpolicy,
        )

    async def _atropos_loop(self, client: AtroposClient) -> None:
        while not self._closing.is_set():
            # While the API is unavailable, the whole step is retried (reconnecting first) with
            # a growing wait; the next step after one that succeeded starts from the shortest.
            await retrying(TransientError, retries=None, backoff=self.cfg.retry_backoff,
                           backoff_max=SINK_BACKOFF_MAX, on_retry=self._api_unavailable)(
                self._atropos_step, client)
            self._wake.clear()
            if not self.outbox.pending():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.cfg.status_interval)
                except asyncio.TimeoutError:
                    pass

    async def _atropos_step(self, client: AtroposClient) -> None:
        """(Re)connect if needed, poll the status when due, send what is pending."""
        if self.registration is None or self.api_up is False:
            await self._reconnect(client)
        if time.monotonic() >= self._next_status:
            await self._poll_status(client)
            self._next_status = time.monotonic() + self.cfg.status_interval
        await self._send_pending(client)

    def _api_unavailable(self, n: int, error: BaseException, wait: float) -> None:
        if self.api_up is not False:
            log.warning("Atropos API unavailable (%s); groups wait in the outbox", error)
        log.debug("Atropos API unavailable (%s); retry %d in %.1fs", error, n, wait,
                  extra={"retry_attempt": n, "retry_wait": wait})
        self.api_up = False

    async def _reconnect(self, client: AtroposClient) -> None:
        """(Re-)register when we never did, or when the API came back without our env."""
        if self.registration is not None:
            try:
                await client.status(self.registration.env_id)
                self.api_up = True
                log.info("Atropos API reachable again; resending the outbox")
                return
            except TransientError as e:
                if "HTTP 500" not in str(e):
                    raise
                log.warning("Atropos API forgot env %d (restarted?); registering again",
                            self.registration.env_id)
        await self._register(client)

    async def _send_pending(self, client: AtroposClient) -> None:
        assert self.registration is not None
        limit = self._max_token_len()
        while pending := self.outbox.pending()[: self.cfg.send_batch]:
            ok: list[tuple[int, str, dict[str, Any]]] = []
            for seq, task_id, group in pending:
                if limit is not None and any(len(t) >= limit for t in group["tokens"]):
                    self._drop(task_id, "too_long")
                    self.outbox.mark_delivered([seq])
                else:
                    ok.append((seq, task_id, group))
            if not ok:
                continue
            try:
                await client.send([_strip(g) for _, _, g in ok], self.registration.env_id)
            except RejectedError as e:
                for seq, task_id, _ in ok:
                    self._drop(task_id, "rejected_by_api")
                log.error("Atropos rejected %d group(s): %s", len(ok), e)
                self.outbox.mark_delivered([seq for seq, _, _ in ok])
                continue
            self._write_groups(ok)
            self.outbox.mark_delivered([seq for seq, _, _ in ok])
            self.api_up = True


def _strip(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != META_KEY}
