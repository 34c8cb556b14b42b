"""TrainerSink: a Ray actor over a GroupSink (Atropos protocol, outbox, groups.jsonl)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from rollout.trainer.sink import GroupRules, GroupSink, TrainerConfig


@ray.remote(num_cpus=0, max_concurrency=256)
class TrainerSink:
    def __init__(self, run_dir: str, trainer: TrainerConfig, rules: GroupRules) -> None:
        logging.basicConfig(level=logging.INFO)
        self._sink = GroupSink(Path(run_dir), trainer, rules)

    async def start(self) -> None:
        await self._sink.start()

    async def submit(self, task_id: str, group: dict[str, Any],
                     meta: list[dict[str, Any]] | None = None) -> str:
        return self._sink.submit(task_id, group, meta)

    def may_start(self) -> bool:
        return self._sink.may_start()

    def stats(self) -> dict[str, Any]:
        return self._sink.stats()

    async def close(self, drain_timeout: float) -> dict[str, Any]:
        await self._sink.close(drain_timeout)
        return self._sink.stats()
