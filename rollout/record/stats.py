"""Typed stats: what the `Metrics` seam (rollout/protocols.py) is fed.

Each is made from what the run already records (a trajectory's event line, a group's fate,
the driver's snapshot of the actors), so no metric call is needed in the code doing the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Event kinds (rollout/record/trace.py) -> the latency phase they are observed as.
PHASE_OF_EVENT = {"acquire": "acquire_wait", "prepare": "prepare", "turn": "llm_call",
                  "tool": "tool_call", "verify": "grading", "send": "trainer_send"}


@dataclass(frozen=True)
class TrajectoryStats:
    outcome: str
    score: float | None  # None when grading did not run (an infrastructure outcome)
    turns: int
    tokens: int
    image: str
    phases: tuple[tuple[str, float], ...]  # (phase, seconds), one per event, in order
    tools: tuple[tuple[str, bool], ...] = ()  # (tool name, failed) per call
    policy_error: str | None = None  # the kind, for outcome policy_error

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> TrajectoryStats:
        phases, tools = [], []
        for kind, _, dur, fields in line.get("ev", []):
            if kind == "acquire":
                if fields.get("waited") is not None:
                    phases.append(("acquire_wait", float(fields["waited"])))
                continue
            if kind == "tool":
                if fields.get("parse_error"):
                    continue
                failed = bool(fields.get("err")) or fields.get("exit") not in (None, 0)
                tools.append((str(fields.get("name")), failed))
            if kind in PHASE_OF_EVENT:
                phases.append((PHASE_OF_EVENT[kind], float(dur)))
        outcome = str(line.get("outcome"))
        graded = any(p == "grading" for p, _ in phases) and outcome not in (
            "sandbox_error", "policy_error", "grading_error")
        return cls(outcome=outcome, score=float(line.get("score") or 0.0) if graded else None,
                   turns=int(line.get("turns") or 0), tokens=int(line.get("tokens") or 0),
                   image=str(line.get("image") or "none"), phases=tuple(phases),
                   tools=tuple(tools),
                   policy_error=policy_error_kind(line.get("error")) if outcome == "policy_error" else None)


def policy_error_kind(error: str | None) -> str:
    """A short label for a policy failure's message (a metric label, so a closed set)."""
    text = (error or "").lower()
    if text.startswith("open:"):
        return "open"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if "connect" in text or "unreachable" in text or "refused" in text:
        return "unreachable"
    if "http 4" in text or " 4" in text[:12]:
        return "http_4xx"
    if "http 5" in text:
        return "http_5xx"
    if "no response" in text or "malformed" in text or "parse" in text:
        return "bad_reply"
    return "other"


@dataclass(frozen=True)
class GroupStats:
    """How one group ended: delivered (accepted by the sink), dropped (a trainer rule), or
    retried (an infrastructure failure: the task goes back to the queue)."""

    result: str
    reason: str = ""

    @classmethod
    def from_fate(cls, fate: str) -> GroupStats:
        if fate in ("accepted", "duplicate"):
            return cls("delivered", fate)
        if fate.startswith("retry: "):
            return cls("retried", fate[len("retry: "):].split(":")[0])
        return cls("dropped", fate)


@dataclass(frozen=True)
class ClusterStats:
    """The driver's view of the actors at one moment."""

    slots: dict[str, tuple[int, int]] = field(default_factory=dict)  # image -> (busy, free)
    hosts: dict[str, int] = field(default_factory=dict)  # state -> hosts
    tasks: dict[str, int] = field(default_factory=dict)  # pending / leased / completed / dropped
    trainer_queue: int | None = None
    trainer_paused: bool = False
    outbox: int = 0

    @classmethod
    def from_point(cls, point: dict[str, Any], pools: list[dict[str, Any]]) -> ClusterStats:
        """From a timeline point (actors/observe.py) and the pools' own stats."""
        slots = {image: (d["in_use"], max(d["slots"] - d["in_use"], 0))
                 for image, d in (point.get("images") or {}).items()}
        hosts = {"up": sum(int(p.get("hosts", 0)) for p in pools),
                 "starting": sum(int(p.get("hosts_starting", 0)) for p in pools)}
        return cls(slots=slots, hosts=hosts,
                   tasks={k: int(point.get(k, 0)) for k in ("pending", "leased", "completed", "dropped")},
                   trainer_queue=point.get("trainer_queue"),
                   trainer_paused=bool(point.get("trainer_paused")),
                   outbox=int(point.get("outbox") or 0))


@dataclass
class KindStats:
    """One task kind's totals (a run may mix kinds: rollout/tasks/mix.py)."""

    groups: int = 0  # delivered (accepted or duplicate)
    trajectories: int = 0
    score_sum: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, other: KindStats) -> None:
        self.groups += other.groups
        self.trajectories += other.trajectories
        self.score_sum += other.score_sum
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.trajectories if self.trajectories else None


@dataclass
class WorkerStats:
    """One RolloutWorker's running totals (polled by the driver; `total` adds workers up).

    Time sums are over trajectories; the progress view turns them into shares of
    `traj_time` (the trajectories' own wall-clock), never adds parallel seconds up as if
    they were serial."""

    groups_done: int = 0
    groups_failed: int = 0
    groups_in_flight: int = 0
    trajectories_done: int = 0
    trajectories_in_flight: int = 0
    traj_time: float = 0.0
    llm_time: float = 0.0
    tool_time: float = 0.0
    prepare_time: float = 0.0
    verify_time: float = 0.0
    acquire_time: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    grading_errors: dict[str, int] = field(default_factory=dict)
    suspected_hacking: int = 0
    kinds: dict[str, KindStats] = field(default_factory=dict)

    def kind(self, kind: str) -> KindStats:
        return self.kinds.setdefault(kind, KindStats())

    def count(self, traj: Any, wall: float, kind: str = "swe_smith") -> None:
        """Add one finished trajectory (a rollout.types.Trajectory) of a task of `kind`
        that took `wall` s."""
        per = self.kind(kind)
        per.trajectories += 1
        per.score_sum += traj.score
        per.outcomes[traj.outcome.value] = per.outcomes.get(traj.outcome.value, 0) + 1
        self.trajectories_done += 1
        self.traj_time += wall
        self.llm_time += traj.llm_time
        self.tool_time += traj.tool_time
        timings = traj.metadata.get("timings") or {}
        self.prepare_time += timings.get("prepare_time", 0.0)
        self.verify_time += timings.get("verify_time", 0.0)
        self.outcomes[traj.outcome.value] = self.outcomes.get(traj.outcome.value, 0) + 1
        kind = traj.metadata.get("grading_error")
        if kind:
            self.grading_errors[kind] = self.grading_errors.get(kind, 0) + 1
        if (traj.metadata.get("verdict") or {}).get("suspected_hacking"):
            self.suspected_hacking += 1

    @classmethod
    def total(cls, workers: list[WorkerStats]) -> WorkerStats:
        out = cls()
        for w in workers:
            for name in cls.__dataclass_fields__:
                mine, theirs = getattr(out, name), getattr(w, name)
                if name == "kinds":
                    for k, v in theirs.items():
                        out.kind(k).add(v)
                elif isinstance(mine, dict):
                    for k, v in theirs.items():
                        mine[k] = mine.get(k, 0) + v
                else:
                    setattr(out, name, mine + theirs)
        return out
