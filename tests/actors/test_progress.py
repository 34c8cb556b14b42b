import logging

from rich.console import Console

from actors.cluster import Snapshot
from actors.progress import ProgressView, render, time_shares
from rollout.record.run_record import KindRecord, RunRecord
from rollout.record.stats import WorkerStats
from tests.actors.helpers import gold_config


def _snap() -> Snapshot:
    snap = Snapshot(started=0.0)
    snap.queue = {"total": 10, "completed": 3, "dropped": 2, "leased": 2, "pending": 3,
                  "drop_reasons": {"grading_error: timeout (after 3 attempts)": 1,
                                   "lease expired (after 3 attempts)": 1},
                  "infra_dropped": 2, "infra_kinds": {"grading_error": 1, "lease_expired": 1}}
    snap.sink = {"delivered": 3, "pending": 0, "drops": {"all_scores_equal": 2},
                 "mean_score": 0.25, "paused": True, "env_id": 0, "api_up": True}
    snap.pools = [{"slots_total": 8, "slots_in_use": 3}]
    # two workers; 4 trajectories that ran in parallel, 10 s each
    snap.workers = [WorkerStats(trajectories_in_flight=3, groups_in_flight=2, trajectories_done=4,
                                traj_time=40.0, llm_time=24.0, tool_time=8.0,
                                prepare_time=2.0, verify_time=4.0, acquire_time=0.0,
                                outcomes={"done": 3, "grading_error": 1},
                                grading_errors={"timeout": 1}, suspected_hacking=1)]
    return snap


def _record() -> RunRecord:
    """What the run dir of `_snap()` records (the summary's figures)."""
    return RunRecord(
        completed=3, dropped=2,
        drop_reasons={"grading_error: timeout (after 3 attempts)": 1,
                      "lease expired (after 3 attempts)": 1, "all_scores_equal": 2},
        infra_kinds={"grading_error": 1, "lease_expired": 1}, delivered=3, mean_score=0.25,
        trajectories=4, outcomes={"done": 3, "grading_error": 1},
        grading_errors={"timeout": 1}, suspected_hacking=1,
        times={"wall": 40.0, "llm": 24.0, "tools": 8.0, "prepare": 2.0, "grading": 4.0},
        kinds={"swe_smith": KindRecord(groups=3, trajectories=4, graded=3, score_sum=1.0)})


def test_live_view_and_summary_show_the_numbers(tmp_path):
    cfg = gold_config(tmp_path, "trainer=atropos", "trainer.url=http://t:8000")
    snap = _snap()
    console = Console(record=True, width=160)
    console.print(render(cfg, snap))
    text = console.export_text()
    for want in ("3 done, 2 dropped, 2 leased, 3 pending of 10", "3/8", "0.250",
                 "llm 60%, tools 20%, prepare 5%, grading 10%", "mean trajectory 10.0s",
                 "PAUSED", "sink:all_scores_equal=2", "done=3"):
        assert want in text, (want, text)
    summary = ProgressView(cfg, enabled=False).summary(snap, _record())
    assert "3 completed, 2 dropped (2 for infrastructure failures), 5 unfinished, of 10" in summary
    assert "groups: 3 delivered, 0 left in outbox" in summary and "mean score: 0.250" in summary
    assert "llm 60%, tools 20%, prepare 5%, grading 10%" in summary
    assert "kind swe_smith: 3 group(s) delivered, 4 trajectories, mean score 0.333" in summary
    assert "outcomes: done=3, grading_error=1" in summary
    assert "1 task(s) dropped because grading could not run" in summary
    assert "1 task(s) dropped because its worker stopped answering" in summary
    assert "1 trajectory(ies): the tests timed out" in summary
    assert "suspected reward hacking: 1" in summary
    assert "all_scores_equal=2" in summary


def test_time_shares_are_shares_of_trajectory_wall_clock():
    t = {"trajectories": 0, "traj_time": 0.0}
    assert time_shares(t) == "-"
    t = {"trajectories": 2, "traj_time": 10.0, "llm_time": 5.0, "tool_time": 2.5,
         "prepare_time": 0.0, "verify_time": 2.5, "acquire_time": 0.0}
    assert time_shares(t).startswith("llm 50%, tools 25%, prepare 0%, grading 25%, slot wait 0%, other 0%")


def test_stopping_row_says_what_happens_next(tmp_path):
    cfg = gold_config(tmp_path)
    snap = _snap()
    snap.stopping, snap.stop_level, snap.grace_deadline = "SIGINT", 1, 1e12
    console = Console(record=True, width=200)
    console.print(render(cfg, snap))
    text = console.export_text()
    assert "SIGINT: 2 group(s) in flight get" in text and "Ctrl-C again cancels them" in text
    snap.stop_level = 2  # the workers have not answered yet: no count to show
    console = Console(record=True, width=200)
    console.print(render(cfg, snap))
    assert "SIGINT: cancelling the groups in flight" in console.export_text()
    snap.cancelled_groups, snap.cancel_counted = 2, True
    console = Console(record=True, width=200)
    console.print(render(cfg, snap))
    assert "cancelled 2 group(s) in flight" in console.export_text()
    summary = ProgressView(cfg, enabled=False).summary(snap, _record())
    assert "cancelled: 2 group(s) in flight" in summary and "run again on resume" in summary


def test_trainer_state_says_what_blocks_progress(tmp_path, caplog):
    from actors.progress import _trainer_state

    cfg = gold_config(tmp_path, "trainer=atropos", "trainer.url=http://t:8000")
    waiting = _trainer_state(cfg, {"paused": True, "api_up": True})
    assert "WAITING for the trainer to register at http://t:8000" in waiting
    down = _trainer_state(cfg, {"paused": True, "api_up": False})
    assert "API UNREACHABLE at http://t:8000: nothing answers" in down
    assert "UNREACHABLE" in _trainer_state(cfg, {"env_id": 0, "api_up": False})
    assert _trainer_state(cfg, {"env_id": 0, "api_up": True, "paused": False}) == ""
    assert _trainer_state(gold_config(tmp_path), {"paused": True}) == ""
    # Without a terminal the same states reach the log, once per change.
    view = ProgressView(cfg, enabled=False)
    snap = Snapshot(started=0.0)
    with caplog.at_level(logging.INFO, logger="progress"):
        for sink in ({"api_up": False}, {"api_up": False}, {"api_up": True}):
            snap.sink = sink
            view.update(snap)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainer:")]
    assert len(lines) == 2 and "UNREACHABLE" in lines[0] and "WAITING" in lines[1]
