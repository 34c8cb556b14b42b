"""What a run dir records, read back: every figure of a run's summary comes from here.

The summary of a run (actors/progress.py) used to add up the workers' in-memory counters,
which count trajectories of groups cancelled at Ctrl-C (never recorded) and only this
launch's work (so a resumed run read "0 delivered"). Read from the files instead:

- tasks: `queue_state.json` (+ journal): completed, dropped and why; `load_report.json`: the
  task folders or rows the loader skipped at start, by reason;
- groups: `groups.jsonl` (what the trainer, or the file, got; one line per group) and
  `outbox.jsonl` (groups not delivered yet, and groups acknowledged but never sent: too long
  for the trainer or rejected by its API);
- trajectories: `events.jsonl` (one line per trajectory of every group that ended: delivered,
  dropped or retried); without it (metrics.enabled=false) the trajectories of the delivered
  groups, from groups.jsonl.

Figures cover every launch of the run dir, not only the last one. Ray-free.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rollout.record.events import EVENTS_FILE, read_events
from rollout.leases import failure_kind, read_state
from rollout.types import INFRA_OUTCOMES

INFRA = {o.value for o in INFRA_OUTCOMES}
# Event kind (rollout/record/trace.py) -> the share of a trajectory's time it is shown as.
TIME_OF_EVENT = {"turn": "llm", "tool": "tools", "prepare": "prepare", "verify": "grading",
                 "acquire": "slot wait"}


@dataclass
class KindRecord:
    """One task kind's figures (a run may mix kinds)."""

    groups: int = 0  # delivered
    trajectories: int = 0  # of every group that ended
    graded: int = 0  # trajectories whose grading ran (no infrastructure failure)
    score_sum: float = 0.0  # over the graded ones

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.graded if self.graded else None


@dataclass
class RunRecord:
    completed: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    infra_kinds: dict[str, int] = field(default_factory=dict)
    delivered: int = 0  # groups in groups.jsonl
    outbox_pending: int = 0  # accepted, not delivered yet (sent first on resume)
    not_sent: int = 0  # acknowledged in the outbox without being delivered
    mean_score: float | None = None  # over the delivered groups' trajectories
    trajectories: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    grading_errors: dict[str, int] = field(default_factory=dict)
    suspected_hacking: int = 0
    # seconds summed over trajectories: "wall" and one entry per TIME_OF_EVENT value
    times: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, KindRecord] = field(default_factory=dict)
    from_events: bool = True  # False: trajectories of delivered groups only (no events.jsonl)
    # Task folders / rows the loader skipped, by reason (load_report.json, written at start).
    skipped_at_load: dict[str, int] = field(default_factory=dict)

    @property
    def infra_dropped(self) -> int:
        return sum(self.infra_kinds.values())

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        run_dir = Path(run_dir)
        rec = cls()
        rec._read_tasks(run_dir)
        rec.skipped_at_load = read_load_report(run_dir)
        groups = rec._read_groups(run_dir)
        if (run_dir / EVENTS_FILE).exists():
            rec._read_events(run_dir)
        else:
            rec.from_events = False
            rec._read_delivered_trajectories(groups)
        return rec

    @property
    def total_skipped_at_load(self) -> int:
        return sum(self.skipped_at_load.values())

    def _read_tasks(self, run_dir: Path) -> None:
        state = read_state(run_dir / "queue_state.json")
        dropped: dict[str, str] = state.get("dropped") or {}
        self.completed = len(state.get("completed") or {})
        self.dropped = len(dropped)
        self.drop_reasons = dict(collections.Counter(dropped.values()))
        self.infra_kinds = dict(collections.Counter(
            failure_kind(dropped[t]) for t in state.get("infra_dropped") or [] if t in dropped))

    def _read_groups(self, run_dir: Path) -> list[dict[str, Any]]:
        groups: dict[int, dict[str, Any]] = {}
        for line in _jsonl(run_dir / "groups.jsonl"):
            groups.setdefault(int(line.get("seq", -1 - len(groups))), line)
        self.delivered = len(groups)
        scores = [float(s) for g in groups.values() for s in g.get("scores") or []]
        self.mean_score = sum(scores) / len(scores) if scores else None
        self.suspected_hacking = sum(1 for g in groups.values() for m in g.get("_meta") or []
                                     if m.get("suspected_hacking"))
        accepted: set[int] = set()
        acked: set[int] = set()
        for line in _jsonl(run_dir / "outbox.jsonl"):
            if "ack" in line:
                acked.update(int(s) for s in line["ack"])
            elif "seq" in line:
                accepted.add(int(line["seq"]))
        self.outbox_pending = len(accepted - acked)
        self.not_sent = len((acked & accepted) - groups.keys())
        return list(groups.values())

    def _add(self, outcome: str, kind: str | None, score: float | None,
             grading_error: str | None) -> None:
        self.trajectories += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if grading_error:
            self.grading_errors[grading_error] = self.grading_errors.get(grading_error, 0) + 1
        if kind is not None:
            k = self.kinds.setdefault(kind, KindRecord())
            k.trajectories += 1
            if outcome not in INFRA:
                k.graded += 1
                k.score_sum += float(score or 0.0)

    def _read_events(self, run_dir: Path) -> None:
        delivered: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
        times: collections.Counter[str] = collections.Counter()
        for line in read_events(run_dir):
            kind = str(line.get("kind") or "swe_smith")
            outcome = str(line.get("outcome"))
            self._add(outcome, kind, line.get("score"), line.get("grading_error"))
            if line.get("group") == "accepted":
                delivered[kind].add((str(line.get("task")), int(line.get("attempt") or 1)))
            times["wall"] += float(line.get("wall") or 0.0)
            for ev_kind, _, dur, _ in line.get("ev") or []:
                if ev_kind in TIME_OF_EVENT:
                    times[TIME_OF_EVENT[ev_kind]] += float(dur)
        self.times = dict(times)
        for kind, k in self.kinds.items():
            k.groups = len(delivered[kind])

    def _read_delivered_trajectories(self, groups: list[dict[str, Any]]) -> None:
        for g in groups:
            for m in g.get("_meta") or []:
                grading = m.get("grading") if m.get("outcome") == "grading_error" else None
                self._add(str(m.get("outcome")), None, m.get("score"), grading)


# Trajectory outcomes that say nothing of a task's gold: a slot or host that died, a policy
# server that did not answer.
_NOT_THE_TASKS = ("sandbox_error", "policy_error")


def gold_failures(run_dir: Path) -> dict[str, str]:
    """Tasks of a `policy=gold` run whose reference solution did not score 1.0, with why:
    every trajectory that ended otherwise (a 0.0, a grading or environment error), and
    every task dropped for an infrastructure failure (a group dropped because its scores
    were all equal is no failure of gold). A gold run validates the environment; these tasks would train on
    wrong rewards. From events.jsonl and queue_state.json (the run dir, every launch)."""
    run_dir = Path(run_dir)
    out: dict[str, str] = {}
    for line in read_events(run_dir):
        task, score = str(line.get("task")), line.get("score")
        if line.get("outcome") == "done" and score == 1.0:
            continue
        if line.get("outcome") in _NOT_THE_TASKS:
            continue  # retried; a task the infrastructure finally dropped is listed below
        why = line.get("error") or (f"scored {score}" if line.get("outcome") == "done"
                                    else str(line.get("outcome")))
        out.setdefault(task, str(why)[:200])
    state = read_state(run_dir / "queue_state.json")
    dropped = state.get("dropped") or {}
    for task in state.get("infra_dropped") or []:  # not a group dropped for equal scores
        out.setdefault(str(task), f"dropped: {dropped.get(task, 'infrastructure')}"[:200])
    return out


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The whole JSON lines of a file (a partial last line of a file being written, or a
    line a crash cut short, is skipped)."""
    try:
        fh = path.open(encoding="utf-8")
    except OSError:
        return
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


LOAD_REPORT = "load_report.json"


def write_load_report(run_dir: Path, skipped: dict[str, int]) -> None:
    """What the task load skipped, by reason (the launch writes it once its run dir exists)."""
    (Path(run_dir) / LOAD_REPORT).write_text(json.dumps({"skipped": dict(skipped)}, indent=1) + "\n")


def read_load_report(run_dir: Path) -> dict[str, int]:
    try:
        doc = json.loads((Path(run_dir) / LOAD_REPORT).read_text())
    except (OSError, ValueError):
        return {}
    skipped = doc.get("skipped") if isinstance(doc, dict) else None
    return {str(k): int(v) for k, v in skipped.items()} if isinstance(skipped, dict) else {}
