"""Everything the HTML report shows, computed from the run dir alone.

Inputs (all optional, so a report of a run still going, or of an old run, still builds):
`events.jsonl` (one line per trajectory, rollout/record/trace.py), `timeline.jsonl` (the driver's
periodic snapshot: slots, tasks, trainer), `queue_state.json` (final drops), `summary.txt`,
`config.yaml`.

Reliability figures (after the IA Modules reliability framework), over the trajectories
recorded:
- success rate: trajectories that ended without an infrastructure failure (sandbox, policy,
  grading) / all trajectories;
- tool-call latency p50 / p99 (seconds, every tool call);
- trajectory completion time p50 / p99 (acquire to the end of grading);
- mean time to error: the run's recorded wall time / infrastructure failures (None: none);
- retry success rate: of the tasks whose group failed at least once, those whose later
  attempt was delivered (None: nothing was retried).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rollout.record.casts import CASTS_DIR
from rollout.record.events import read_events
from rollout.leases import read_state
from rollout.types import INFRA_OUTCOMES

TIMELINE_FILE = "timeline.jsonl"
PHASES = ("acquire", "prepare", "llm", "tools", "verify", "send", "other")
INFRA = {o.value for o in INFRA_OUTCOMES}
VIEWER_PER_TASK = 8  # trajectories per task embedded in the viewer
VIEWER_MAX = 2000  # trajectories embedded in all
CAST_EMBED_MAX = 1_000_000  # bytes of one cast embedded in the page (bigger: left out)


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (None for no values)."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def phase_seconds(traj: dict[str, Any]) -> dict[str, float]:
    """Where one trajectory's wall time went, by phase (sums to its wall time)."""
    out = dict.fromkeys(PHASES, 0.0)
    names = {"acquire": "acquire", "prepare": "prepare", "turn": "llm", "tool": "tools",
             "verify": "verify", "send": "send"}
    for kind, _, dur, _ in traj.get("ev", []):
        if kind in names:
            out[names[kind]] += dur
    out["other"] = max(0.0, float(traj.get("wall", 0.0)) - sum(out.values()))
    return out


def completion_time(traj: dict[str, Any]) -> float:
    """Seconds from the trajectory's start to the end of its last own phase (its grading,
    usually): the wait for the rest of its group and the send are not its own."""
    ends = [off + dur for kind, off, dur, _ in traj.get("ev", []) if kind != "send"]
    return max(ends) if ends else float(traj.get("wall", 0.0))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a partial last line of a file being written
    return out


def reliability(trajs: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(trajs)
    errors = sum(1 for t in trajs if t.get("outcome") in INFRA)
    tool_lat = [ev[2] for t in trajs for ev in t.get("ev", [])
                if ev[0] == "tool" and not ev[3].get("parse_error")]
    walls = [completion_time(t) for t in trajs]
    if trajs:
        start = min(t["t0"] for t in trajs)
        end = max(t["t0"] + t.get("wall", 0.0) for t in trajs)
        span = end - start
    else:
        span = 0.0
    attempts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for t in trajs:
        attempts[t["task"]].append((int(t.get("attempt", 1)), str(t.get("group", ""))))
    retried = [a for a in attempts.values() if any(f.startswith("retry") for _, f in a)]
    recovered = sum(1 for a in retried
                    if any(f == "accepted" for n_, f in a
                           if n_ > min(n2 for n2, f2 in a if f2.startswith("retry"))))
    return {
        "trajectories": n,
        "success_rate": (n - errors) / n if n else None,
        "solved_rate": sum(1 for t in trajs if (t.get("score") or 0) >= 1.0) / n if n else None,
        "infra_errors": errors,
        "tool_calls": len(tool_lat),
        "tool_p50": quantile(tool_lat, 0.5),
        "tool_p99": quantile(tool_lat, 0.99),
        "completion_p50": quantile(walls, 0.5),
        "completion_p99": quantile(walls, 0.99),
        "completion_mean": sum(walls) / n if n else None,
        "mean_time_to_error": span / errors if errors else None,
        "span": span,
        "retried_tasks": len(retried),
        "retry_success_rate": recovered / len(retried) if retried else None,
    }


def throughput(trajs: list[dict[str, Any]], t0: float | None = None,
               bins: int = 24) -> list[list[float]]:
    """[[seconds since t0 (default: the first start), trajectories finished per minute in
    that bin], ...]."""
    if not trajs:
        return []
    t0 = min(t["t0"] for t in trajs) if t0 is None else t0
    ends = [max(t["t0"] + t.get("wall", 0.0) - t0, 0.0) for t in trajs]
    span = max(max(ends), 1e-6)
    width = max(span / bins, 2.0)
    counts = Counter(int(e // width) for e in ends)
    last = int(span // width)
    return [[round((i + 0.5) * width, 2), round(counts.get(i, 0) * 60.0 / width, 2)]
            for i in range(last + 1)]


def drops(trajs: list[dict[str, Any]], queue_state: dict[str, Any]) -> dict[str, int]:
    """Groups that were not delivered, by reason: retried attempts (per failure kind),
    trainer-rule drops, and tasks finally dropped by the queue."""
    out: Counter[str] = Counter()
    seen: set[tuple[str, int]] = set()
    for t in trajs:
        key = (t["task"], int(t.get("attempt", 1)))
        fate = str(t.get("group", ""))
        if key in seen or fate in ("accepted", "", "cancelled"):
            continue
        seen.add(key)
        if fate.startswith("retry: "):
            out["retried: " + fate[len("retry: "):].split(":")[0]] += 1
        else:
            out["trainer: " + fate] += 1
    for reason in (queue_state.get("dropped") or {}).values():
        out["dropped: " + str(reason).split(" (after")[0].split(":")[0]] += 1
    return dict(out)


def _viewer_entry(t: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What the viewer shows of one trajectory. `wall` runs until its whole group was done
    (the line is written then); `own` is its own time, to the end of its grading. Its
    terminal recordings (casts/) are embedded: the page plays them offline."""
    entry = {k: t.get(k) for k in ("id", "task", "attempt", "worker", "outcome", "score",
                                   "error", "turns", "tokens", "wall", "group", "ev")}
    entry["own"] = round(completion_time(t), 4)
    casts = {}
    for kind, name in (t.get("casts") or {}).items():
        path = run_dir / str(name)
        try:
            if path.resolve().parent == (run_dir / CASTS_DIR).resolve() \
                    and path.stat().st_size <= CAST_EMBED_MAX:
                casts[kind] = path.read_text(encoding="utf-8")
        except OSError:
            continue  # a cast not written (yet): the viewer shows the events alone
    if casts:
        entry["casts"] = casts
    return entry


def kinds(trajs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task kind (a run may mix kinds): graded trajectories and their mean score."""
    out: dict[str, dict[str, Any]] = {}
    for t in trajs:
        if t.get("outcome") in INFRA:
            continue
        k = out.setdefault(str(t.get("kind") or "swe_smith"), {"trajectories": 0, "score_sum": 0.0})
        k["trajectories"] += 1
        k["score_sum"] += float(t.get("score") or 0.0)
    return {name: {"trajectories": k["trajectories"],
                   "mean_score": round(k["score_sum"] / k["trajectories"], 4)}
            for name, k in sorted(out.items())}


def collect(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    trajs = list(read_events(run_dir))
    timeline = _read_jsonl(run_dir / TIMELINE_FILE)
    try:
        queue_state = read_state(run_dir / "queue_state.json")
    except (OSError, ValueError):  # unreadable: the report goes on without its drops
        queue_state = {}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in trajs:
        by_task[t["task"]].append(t)
    phases_by_task = {}
    for task, ts in sorted(by_task.items()):
        sums = dict.fromkeys(PHASES, 0.0)
        for t in ts:
            for k, v in phase_seconds(t).items():
                sums[k] += v
        phases_by_task[task] = {k: round(v / len(ts), 4) for k, v in sums.items()}
    viewer: dict[str, list[dict[str, Any]]] = {}
    room = VIEWER_MAX
    for task, ts in sorted(by_task.items()):
        if room <= 0:
            break
        picked = sorted(ts, key=lambda t: (t.get("attempt", 1), t["id"]))[:min(VIEWER_PER_TASK, room)]
        viewer[task] = [_viewer_entry(t, run_dir) for t in picked]
        room -= len(picked)
    t0 = timeline[0]["t"] if timeline else (min(t["t0"] for t in trajs) if trajs else 0.0)
    summary = run_dir / "summary.txt"
    return {
        "run_dir": str(run_dir),
        "run_id": (run_dir / "run_id").read_text().strip() if (run_dir / "run_id").exists() else run_dir.name,
        "finished": summary.exists() or bool(timeline and timeline[-1].get("final")),
        "summary": summary.read_text(encoding="utf-8") if summary.exists() else "",
        "reliability": reliability(trajs),
        "outcomes": dict(Counter(str(t.get("outcome")) for t in trajs)),
        "drops": drops(trajs, queue_state),
        "throughput": throughput(trajs, t0),
        "scores": {task: [t.get("score") or 0.0 for t in ts if t.get("outcome") not in INFRA]
                   for task, ts in sorted(by_task.items())},
        "kinds": kinds(trajs),
        "phases": PHASES,
        "phases_by_task": phases_by_task,
        "slots": [[round(p["t"] - t0, 2), p.get("slots_in_use", 0), p.get("slots_total", 0)]
                  for p in timeline],
        "viewer": viewer,
        "viewer_truncated": len(trajs) > sum(len(v) for v in viewer.values()),
    }
