"""The metrics seam's implementations that need no Ray: the no-op default, the mapping from
typed stats to metric families, and a Prometheus registry (`prometheus_client`, text
exposition format 0.0.4).

`StatsMetrics` implements `rollout.protocols.Metrics` over any `Instruments` (this module's
`PrometheusRegistry`, or `actors.metrics.RayInstruments` for `ray.util.metrics`), so every
backend gets the same families under the same names. It never raises: a failing backend is
logged once and skipped.

Names follow Prometheus' rules: `[a-z_][a-z0-9_]*`, one `rollout_` prefix, base units in the
name (`_seconds`), counters end in `_total`.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rollout.record.stats import ClusterStats, GroupStats, TrajectoryStats

log = logging.getLogger(__name__)
# No `<name>_created` series beside every counter and histogram (a process-wide setting of
# the library): the exposition stays the families' own series, as dashboards read them.
prometheus_client.disable_created_metrics()

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


FAMILIES = {f.name: f for f in (
    Family("rollout_trajectories_total", "counter", "Trajectories finished, by outcome.",
           ("outcome",)),
    Family("rollout_groups_total", "counter",
           "Groups by how they ended (delivered, dropped, retried) and why.", ("result", "reason")),
    Family("rollout_trajectory_score", "histogram", "Scores of graded trajectories.", (),
           (0.0, 0.25, 0.5, 0.75, 1.0)),
    Family("rollout_trajectory_turns", "histogram", "Turns per trajectory.", (),
           (1, 2, 4, 8, 16, 32, 64, 128)),
    Family("rollout_trajectory_tokens", "histogram", "Tokens per trajectory (training sequence).",
           (), (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)),
    Family("rollout_phase_seconds", "histogram",
           "Latency per phase: acquire_wait, prepare, llm_call, tool_call, grading, trainer_send.",
           ("phase",), SECONDS),
    Family("rollout_tool_calls_total", "counter", "Tool calls, by tool and status.",
           ("tool", "status")),
    Family("rollout_policy_errors_total", "counter", "Trajectories ended by a policy error, by kind.",
           ("kind",)),
    Family("rollout_slots", "gauge", "Sandbox slots by image and state (busy, free).",
           ("image", "state")),
    Family("rollout_hosts", "gauge", "Sandbox hosts by state (up, starting).", ("state",)),
    Family("rollout_tasks", "gauge", "Tasks of the run by state.", ("state",)),
    Family("rollout_trainer_queue_size", "gauge", "The trainer's queue size (Atropos /status-env)."),
    Family("rollout_trainer_paused", "gauge", "1 while pacing holds back new groups."),
    Family("rollout_outbox_groups", "gauge", "Groups in the outbox, not yet delivered."),
)}


class Instruments(Protocol):
    """What a metrics backend provides, per family of FAMILIES."""

    def inc(self, family: Family, labels: dict[str, str], value: float = 1.0) -> None: ...

    def set(self, family: Family, labels: dict[str, str], value: float) -> None: ...

    def observe(self, family: Family, labels: dict[str, str], value: float) -> None: ...


class NoopMetrics:
    """The default: nothing recorded."""

    def trajectory(self, stats: TrajectoryStats) -> None:
        pass

    def group(self, stats: GroupStats) -> None:
        pass

    def cluster(self, stats: ClusterStats) -> None:
        pass


class StatsMetrics:
    """`Metrics` over one or more `Instruments`: typed stats -> metric families."""

    def __init__(self, *backends: Instruments) -> None:
        self.backends = list(backends)
        self._failed: set[int] = set()

    def _each(self, op: str, name: str, labels: dict[str, str], value: float) -> None:
        fam = FAMILIES[name]
        for i, b in enumerate(self.backends):
            try:
                getattr(b, op)(fam, labels, value)
            except Exception as e:  # a metrics backend must never stop a run
                if i not in self._failed:
                    self._failed.add(i)
                    log.warning("metrics backend %s failed (%s); it is skipped from now on",
                                type(b).__name__, e)
        if self._failed:
            self.backends = [b for i, b in enumerate(self.backends) if i not in self._failed]
            self._failed.clear()

    def trajectory(self, s: TrajectoryStats) -> None:
        self._each("inc", "rollout_trajectories_total", {"outcome": s.outcome}, 1)
        if s.score is not None:
            self._each("observe", "rollout_trajectory_score", {}, s.score)
        self._each("observe", "rollout_trajectory_turns", {}, s.turns)
        self._each("observe", "rollout_trajectory_tokens", {}, s.tokens)
        for phase, seconds in s.phases:
            self._each("observe", "rollout_phase_seconds", {"phase": phase}, seconds)
        for tool, failed in s.tools:
            self._each("inc", "rollout_tool_calls_total",
                       {"tool": tool, "status": "error" if failed else "ok"}, 1)
        if s.policy_error:
            self._each("inc", "rollout_policy_errors_total", {"kind": s.policy_error}, 1)

    def group(self, s: GroupStats) -> None:
        self._each("inc", "rollout_groups_total", {"result": s.result, "reason": s.reason}, 1)

    def cluster(self, s: ClusterStats) -> None:
        for image, (busy, free) in s.slots.items():
            self._each("set", "rollout_slots", {"image": image, "state": "busy"}, busy)
            self._each("set", "rollout_slots", {"image": image, "state": "free"}, free)
        for state, n in s.hosts.items():
            self._each("set", "rollout_hosts", {"state": state}, n)
        for state, n in s.tasks.items():
            self._each("set", "rollout_tasks", {"state": state}, n)
        if s.trainer_queue is not None:
            self._each("set", "rollout_trainer_queue_size", {}, s.trainer_queue)
        self._each("set", "rollout_trainer_paused", {}, int(s.trainer_paused))
        self._each("set", "rollout_outbox_groups", {}, s.outbox)


class PrometheusRegistry:
    """`Instruments` kept in a private `prometheus_client` registry and rendered as its text
    exposition. A family appears once it has a value (the driver and the sink each render
    their own families into one /metrics page, so neither may declare the other's).
    Thread-safe."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, family: Family, labels: dict[str, str]) -> Any:
        metric = self._metrics.get(family.name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(family.name)
                if metric is None:
                    metric = self._metrics[family.name] = _KINDS[family.kind](
                        family.name, family.help, family.labels, registry=self._registry,
                        **({"buckets": family.buckets} if family.kind == "histogram" else {}))
        return metric.labels(**labels) if family.labels else metric

    def inc(self, family: Family, labels: dict[str, str], value: float = 1.0) -> None:
        self._metric(family, labels).inc(value)

    def set(self, family: Family, labels: dict[str, str], value: float) -> None:
        self._metric(family, labels).set(value)

    def observe(self, family: Family, labels: dict[str, str], value: float) -> None:
        self._metric(family, labels).observe(value)

    def render(self) -> str:
        return generate_latest(self._registry).decode()


_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
