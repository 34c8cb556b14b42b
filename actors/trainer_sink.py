"""TrainerSink: a Ray actor over a GroupSink (Atropos protocol, outbox, groups.jsonl), and
the run's trajectory records (events.jsonl, and the metrics fed from them): both live on the
driver's node, where the run dir is."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from actors.metrics import RayInstruments
from rollout.record.events import EventLog
from rollout.record.metrics import NoopMetrics, PrometheusRegistry, StatsMetrics
from rollout.record.stats import GroupStats, TrajectoryStats
from rollout.trainer.sink import GroupRules, GroupSink, TrainerConfig


@ray.remote(num_cpus=0, max_concurrency=256)
class TrainerSink:
    def __init__(self, run_dir: str, trainer: TrainerConfig, rules: GroupRules,
                 observe: bool = True) -> None:
        logging.basicConfig(level=logging.INFO)
        self._sink = GroupSink(Path(run_dir), trainer, rules)
        self._events = EventLog(Path(run_dir))
        self._registry = PrometheusRegistry()  # served by the driver's /metrics
        self._metrics = (StatsMetrics(self._registry, RayInstruments()) if observe
                         else NoopMetrics())

    async def start(self) -> None:
        await self._sink.start()
        await self._events.start()

    def record(self, lines: list[dict[str, Any]]) -> None:
        """One finished group's trajectory lines (rollout/record/trace.py): buffered, written by a
        background task."""
        self._events.add(lines)
        for line in lines:
            self._metrics.trajectory(TrajectoryStats.from_line(line))
        if lines:
            self._metrics.group(GroupStats.from_fate(str(lines[0].get("group", ""))))

    def metrics_text(self) -> str:
        """The trajectory and group families, in Prometheus text format."""
        return self._registry.render()

    async def submit(self, task_id: str, group: dict[str, Any],
                     meta: list[dict[str, Any]] | None = None) -> str:
        return self._sink.submit(task_id, group, meta)

    def may_start(self) -> bool:
        return self._sink.may_start()

    def stats(self) -> dict[str, Any]:
        return self._sink.stats()

    async def close(self, drain_timeout: float) -> dict[str, Any]:
        await self._sink.close(drain_timeout)
        await self._events.close()
        return self._sink.stats()
