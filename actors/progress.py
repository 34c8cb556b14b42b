"""The live terminal view of a run (rich), its plain-log equivalent, and the final summary."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from actors.cluster import Snapshot
from rollout.record.run_record import RunRecord
from rollout.record.stats import WorkerStats

log = logging.getLogger("progress")

# What each kind of infrastructure failure means, for a user reading the summary.
INFRA_WORDS = {
    "sandbox_error": "the sandbox failed (a slot server died, or the repo could not be prepared)",
    "policy_error": "the policy server failed (no answer within agent.llm_timeout, "
                    "unreachable, or bad replies)",
    "grading_error": "grading could not run (a timeout, a missing interpreter or pytest, "
                     "or no test report)",
    "worker_error": "a rollout worker hit an internal error",
    "task_error": "the task cannot run as given (its gold solution is cut by policy.max_tokens, "
                  "or missing or not runnable; see the drops line)",
    "worker_died": "the rollout worker running it died",
    "lease_expired": "its worker stopped answering (lease expired)",
}
GRADING_WORDS = {
    "timeout": "the tests timed out",
    "cannot_run": "the test command could not start (no interpreter?)",
    "no_report": "pytest never started a session (pytest missing?)",
    "grader_bug": "the grader itself failed",
    "killed": "the test process was killed (memory limit?) before pytest finished",
    "report_truncated": "the test report was cut off (raise sandbox.output_cap)",
    "no_reward": "the verifier script wrote no reward file",
    "bad_reward": "the reward file held no number",
}
SKIP_REASONS_SHOWN = 5  # load skip reasons named in the summary (all in load_report.json)
PLAIN_LOG_EVERY = 30.0  # seconds between plain progress lines when stdout is not a terminal


def _totals(snap: Snapshot) -> dict[str, Any]:
    w = WorkerStats.total(snap.workers)
    return {
        "in_flight": w.trajectories_in_flight,
        "groups_in_flight": w.groups_in_flight,
        "trajectories": w.trajectories_done,
        "traj_time": w.traj_time,
        "llm_time": w.llm_time,
        "tool_time": w.tool_time,
        "prepare_time": w.prepare_time,
        "verify_time": w.verify_time,
        "acquire_time": w.acquire_time,
        "slots": f"{sum(p.get('slots_in_use', 0) for p in snap.pools)}/"
                 f"{sum(p.get('slots_total', 0) for p in snap.pools)}",
        "outcomes": w.outcomes,
        "grading_errors": w.grading_errors,
        "suspected_hacking": w.suspected_hacking,
        "kinds": w.kinds,
    }


def time_shares(t: dict[str, Any]) -> str:
    """Where a trajectory's wall-clock goes, as shares of the trajectories' own time: sums
    over parallel trajectories are never shown as if they were serial seconds."""
    whole = t["traj_time"]
    if whole <= 0 or not t["trajectories"]:
        return "-"
    parts = [("llm", t["llm_time"]), ("tools", t["tool_time"]), ("prepare", t["prepare_time"]),
             ("grading", t["verify_time"]), ("slot wait", t["acquire_time"])]
    other = max(0.0, whole - sum(v for _, v in parts))
    shown = ", ".join(f"{name} {100 * v / whole:.0f}%" for name, v in [*parts, ("other", other)])
    return f"{shown} (mean trajectory {whole / t['trajectories']:.1f}s)"


def record_time_shares(rec: RunRecord) -> str:
    """`time_shares` of the trajectories a run dir records."""
    t = rec.times
    return time_shares({"trajectories": rec.trajectories, "traj_time": t.get("wall", 0.0),
                        "llm_time": t.get("llm", 0.0), "tool_time": t.get("tools", 0.0),
                        "prepare_time": t.get("prepare", 0.0),
                        "verify_time": t.get("grading", 0.0),
                        "acquire_time": t.get("slot wait", 0.0)})


def _stopping(snap: Snapshot, t: dict[str, Any]) -> str | None:
    if not snap.stopping:
        return None
    n = t["groups_in_flight"]
    if snap.stop_level >= 2:
        # The count the workers answered when they cancelled (the polled in-flight figure
        # is already 0 by the time this is shown); none until they have answered.
        if not snap.cancel_counted:
            return f"{snap.stopping}: cancelling the groups in flight"
        return (f"{snap.stopping}: cancelled {snap.cancelled_groups} group(s) in flight "
                "(their tasks go back to the queue)")
    left = max(0.0, (snap.grace_deadline or time.time()) - time.time())
    return (f"{snap.stopping}: {n} group(s) in flight get {left:.0f}s to finish; "
            "Ctrl-C again cancels them")


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
    table.add_row("time shares", time_shares(t))
    table.add_row("trainer", f"delivered {s.get('delivered', 0)}, outbox {s.get('pending', 0)}"
                             + _trainer_state(cfg, s))
    drops = {**q.get("drop_reasons", {}), **{f"sink:{k}": v for k, v in s.get("drops", {}).items()}}
    table.add_row("drops", ", ".join(f"{k}={v}" for k, v in drops.items()) or "none")
    if t["outcomes"]:
        table.add_row("outcomes", ", ".join(f"{k}={v}" for k, v in sorted(t["outcomes"].items())))
    stopping = _stopping(snap, t)
    if stopping:
        table.add_row("stopping", stopping)
    return table


def _trainer_state(cfg: Any, s: dict[str, Any]) -> str:
    if not cfg.trainer.api:
        return ""
    if s.get("env_id") is None:
        if s.get("api_up") is False:
            return (f", API UNREACHABLE at {cfg.trainer.url}: nothing answers there "
                    "(groups wait in the outbox)")
        return f", WAITING for the trainer to register at {cfg.trainer.url}"
    if s.get("api_up") is False:
        return ", API UNREACHABLE (groups wait in the outbox)"
    return ", PAUSED (trainer queue full)" if s.get("paused") else ""


class ProgressView:
    """On a terminal: a live table that leaves the screen clean when it ends (the summary is
    printed after it). Elsewhere: plain log lines, one when the trainer's state changes and
    one every PLAIN_LOG_EVERY seconds."""

    def __init__(self, cfg: Any, enabled: bool) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self._live: Live | None = None
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []
        self._last_state: str | None = None
        self._last_line = 0.0
        self._last_stop: str | None = None

    def __enter__(self) -> ProgressView:
        if self.enabled:
            self._live = Live(console=Console(), refresh_per_second=4, transient=True)
            self._live.__enter__()
            # Log handlers captured the real stdout/stderr before the view started; send
            # their lines through the view's redirect so they print above the table
            # instead of tearing it.
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stdout__, sys.__stderr__):
                    self._swapped.append((h, h.stream))
                    h.setStream(sys.stdout if h.stream is sys.__stdout__ else sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        for h, stream in self._swapped:
            h.setStream(stream)
        self._swapped.clear()

    def update(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render(self.cfg, snap))
            return
        state = _trainer_state(self.cfg, snap.sink).lstrip(", ")
        if state != self._last_state:
            if state:
                log.info("trainer: %s", state)
            elif self._last_state:
                log.info("trainer: ready")
            self._last_state = state
        now = time.monotonic()
        if now - self._last_line >= PLAIN_LOG_EVERY:
            self._last_line = now
            q = snap.queue
            log.info("progress: %d done, %d dropped, %d leased, %d pending of %s",
                     q.get("completed", 0), q.get("dropped", 0), q.get("leased", 0),
                     q.get("pending", 0), q.get("total", "?"))
        stopping = _stopping(snap, _totals(snap))
        # Once per stage: the grace period, the cancelling, the count it ended with.
        stage = (stopping or "").split(":")[0] + ("+" if snap.cancel_counted else "")
        if stopping and stage != self._last_stop:
            self._last_stop = stage
            log.warning("%s", stopping)

    def summary(self, snap: Snapshot, rec: RunRecord, resumed: bool = False) -> str:
        """The run's summary: every count from what the run dir records (`rec`), so it
        agrees with queue_state.json, groups.jsonl and events.jsonl; only the elapsed time,
        the stop and what is still unfinished come from this launch (`snap`)."""
        q = snap.queue
        unfinished = q.get("pending", 0) + q.get("leased", 0)
        infra = rec.infra_dropped
        not_sent = (f", {rec.not_sent} not sent (too long for the trainer, or rejected by "
                    "its API)") if rec.not_sent else ""
        lines = [
            f"run finished{' (' + snap.stopping + ')' if snap.stopping else ''} "
            f"in {time.time() - snap.started:.1f}s",
            f"  tasks: {rec.completed} completed, {rec.dropped} dropped"
            + (f" ({infra} for infrastructure failures)" if infra else "")
            + f", {unfinished} unfinished, of {q.get('total', 0)}",
            f"  groups: {rec.delivered} delivered, {rec.outbox_pending} left in outbox{not_sent}",
            f"  mean score: {'-' if rec.mean_score is None else f'{rec.mean_score:.3f}'}",
            f"  time shares: {record_time_shares(rec)}",
        ]
        if resumed:
            lines.insert(1, "  (a resumed run: the figures cover every launch of its run dir)")
        if rec.skipped_at_load:
            reasons = sorted(rec.skipped_at_load.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = "; ".join(f"{n}x {why}" for why, n in reasons[:SKIP_REASONS_SHOWN])
            more = f"; {len(reasons) - SKIP_REASONS_SHOWN} more reasons in load_report.json" \
                if len(reasons) > SKIP_REASONS_SHOWN else ""
            lines.append(f"  skipped at load: {rec.total_skipped_at_load} task folder(s) or "
                         f"row(s): {shown}{more}")
        for kind, n in sorted(rec.infra_kinds.items()):
            lines.append(f"  FAILED: {n} task(s) dropped because {INFRA_WORDS.get(kind, kind)} "
                         f"on every attempt")
        for cause, n in snap.worker_deaths.items():
            lines.append(f"  FAILED: rollout workers died {n} time(s): {cause}")
        if rec.grading_errors:
            lines.append("  grading did not run for " + ", ".join(
                f"{n} trajectory(ies): {GRADING_WORDS.get(k, k)}"
                for k, n in sorted(rec.grading_errors.items()))
                + " (never scored; retried)")
        if rec.suspected_hacking:
            lines.append(f"  suspected reward hacking: {rec.suspected_hacking} trajectory(ies) "
                         "touched pytest internals or the report (see groups.jsonl)")
        if snap.cancelled_groups:
            lines.append(f"  cancelled: {snap.cancelled_groups} group(s) in flight; their tasks "
                         "were returned untried and run again on resume (same run.dir)")
        if unfinished and snap.stopping:
            lines.append(f"  resume with: python launch.py run.dir={self.cfg.run.dir}")
        if rec.drop_reasons:
            lines.append("  drops: " + ", ".join(f"{k}={v}" for k, v in rec.drop_reasons.items()))
        for kind, k in sorted(rec.kinds.items()):
            mean = "-" if k.mean_score is None else f"{k.mean_score:.3f}"
            lines.append(f"  kind {kind}: {k.groups} group(s) delivered, "
                         f"{k.trajectories} trajectories, mean score {mean}")
        if rec.outcomes:
            lines.append("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(rec.outcomes.items()))
                         + ("" if rec.from_events else
                            " (delivered groups only: metrics.enabled=false records no events)"))
        if snap.worker_restarts:
            lines.append(f"  worker restarts: {snap.worker_restarts}")
        return "\n".join(lines)
