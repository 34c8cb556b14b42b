"""The live terminal view of a run (rich) and its final summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from actors.cluster import Snapshot


def _totals(snap: Snapshot) -> dict[str, Any]:
    w = snap.workers
    slots_total = sum(p.get("slots_total", 0) for p in snap.pools)
    slots_used = sum(p.get("slots_in_use", 0) for p in snap.pools)
    outcomes: dict[str, int] = {}
    for s in w:
        for k, v in s.get("outcomes", {}).items():
            outcomes[k] = outcomes.get(k, 0) + v
    return {
        "in_flight": sum(s.get("trajectories_in_flight", 0) for s in w),
        "groups_in_flight": sum(s.get("groups_in_flight", 0) for s in w),
        "llm_time": sum(s.get("llm_time", 0.0) for s in w),
        "tool_time": sum(s.get("tool_time", 0.0) for s in w),
        "slots": f"{slots_used}/{slots_total}",
        "outcomes": outcomes,
    }


def render(cfg: Any, snap: Snapshot) -> Table:
    q, s, t = snap.queue, snap.sink, _totals(snap)
    elapsed = max(time.time() - snap.started, 1e-9)
    done = q.get("completed", 0)
    table = Table(title=f"rollout: {cfg.env.name} -> {cfg.trainer.type}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("tasks", f"{done} done, {q.get('dropped', 0)} dropped, "
                           f"{q.get('leased', 0)} leased, {q.get('pending', 0)} pending "
                           f"of {q.get('total', '?')}")
    table.add_row("groups/s", f"{done / elapsed:.3f}")
    table.add_row("in flight", f"{t['groups_in_flight']} groups, {t['in_flight']} trajectories")
    table.add_row("slots in use", t["slots"])
    ms = s.get("mean_score")
    table.add_row("mean score", "-" if ms is None else f"{ms:.3f}")
    table.add_row("llm / tool time", f"{t['llm_time']:.1f}s / {t['tool_time']:.1f}s")
    table.add_row("trainer", f"delivered {s.get('delivered', 0)}, outbox {s.get('pending', 0)}"
                             + _trainer_state(cfg, s))
    drops = {**q.get("drop_reasons", {}), **{f"sink:{k}": v for k, v in s.get("drops", {}).items()}}
    table.add_row("drops", ", ".join(f"{k}={v}" for k, v in drops.items()) or "none")
    if t["outcomes"]:
        table.add_row("outcomes", ", ".join(f"{k}={v}" for k, v in sorted(t["outcomes"].items())))
    if snap.stopping:
        table.add_row("stopping", snap.stopping)
    return table


def _trainer_state(cfg: Any, s: dict[str, Any]) -> str:
    if cfg.trainer.type != "atropos":
        return ""
    if s.get("env_id") is None:
        return f", WAITING for the trainer at {cfg.trainer.url}"
    if s.get("api_up") is False:
        return ", API UNREACHABLE (groups wait in the outbox)"
    return ", PAUSED (trainer queue full)" if s.get("paused") else ""


class ProgressView:
    def __init__(self, cfg: Any, enabled: bool) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self._live: Live | None = None

    def __enter__(self) -> ProgressView:
        if self.enabled:
            self._live = Live(console=Console(), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render(self.cfg, snap))

    def summary(self, snap: Snapshot) -> str:
        q, s, t = snap.queue, snap.sink, _totals(snap)
        ms = s.get("mean_score")
        lines = [
            f"run finished{' (' + snap.stopping + ')' if snap.stopping else ''} "
            f"in {time.time() - snap.started:.1f}s",
            f"  tasks: {q.get('completed', 0)} completed, {q.get('dropped', 0)} dropped, "
            f"{q.get('pending', 0) + q.get('leased', 0)} unfinished, of {q.get('total', 0)}",
            f"  groups: {s.get('delivered', 0)} delivered, {s.get('pending', 0)} left in outbox",
            f"  mean score: {'-' if ms is None else f'{ms:.3f}'}",
            f"  llm time {t['llm_time']:.1f}s, tool time {t['tool_time']:.1f}s",
        ]
        drops = {**q.get("drop_reasons", {}), **s.get("drops", {})}
        if drops:
            lines.append("  drops: " + ", ".join(f"{k}={v}" for k, v in drops.items()))
        if t["outcomes"]:
            lines.append("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(t["outcomes"].items())))
        if snap.worker_restarts:
            lines.append(f"  worker restarts: {snap.worker_restarts}")
        return "\n".join(lines)
