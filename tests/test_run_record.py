"""RunRecord reads a run's figures back from the files the run wrote (the summary's source)."""

from __future__ import annotations

import json
from pathlib import Path

from rollout.record.run_record import RunRecord


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def traj(task: str, outcome: str, score: float, group: str, kind: str = "swe_smith",
         attempt: int = 1, grading_error: str | None = None) -> dict:
    return {"task": task, "attempt": attempt, "kind": kind, "outcome": outcome, "score": score,
            "group": group, "grading_error": grading_error, "wall": 10.0,
            "ev": [["acquire", 0, 1.0, {}], ["turn", 1, 6.0, {}], ["verify", 7, 2.0, {}]]}


def test_figures_come_from_the_files(tmp_path: Path):
    (tmp_path / "queue_state.json").write_text(json.dumps({
        "completed": {"a": "accepted", "b": "accepted"},
        "dropped": {"c": "grading_error: timeout (after 3 attempts)", "d": "all_scores_equal"},
        "infra_dropped": ["c"]}))
    group = {"scores": [1.0, 0.0], "_meta": [{"suspected_hacking": True}, {}]}
    # seq 0 written twice (a crash between writing and acknowledging): one group
    write_jsonl(tmp_path / "groups.jsonl", [{"seq": 0, **group}, {"seq": 0, **group},
                                            {"seq": 1, "scores": [1.0, 1.0]}])
    # seq 2 acknowledged without being delivered (too long); seq 3 still to send
    write_jsonl(tmp_path / "outbox.jsonl", [{"seq": s, "task_id": "x", "group": {}}
                                            for s in range(4)] + [{"ack": [0, 1, 2]}])
    write_jsonl(tmp_path / "events.jsonl", [
        traj("a", "done", 1.0, "accepted"), traj("a", "done", 0.0, "accepted"),
        traj("b", "done", 1.0, "accepted", kind="terminal"),
        traj("b", "done", 1.0, "accepted", kind="terminal"),
        traj("c", "grading_error", 0.0, "retry: grading_error: timeout",
             grading_error="timeout"),
        traj("c", "done", 1.0, "retry: grading_error: timeout"),
    ])
    rec = RunRecord.read(tmp_path)
    assert (rec.completed, rec.dropped, rec.infra_kinds) == (2, 2, {"grading_error": 1})
    assert rec.drop_reasons["all_scores_equal"] == 1
    assert (rec.delivered, rec.outbox_pending, rec.not_sent) == (2, 1, 1)
    assert rec.mean_score == 0.75 and rec.suspected_hacking == 1
    assert rec.trajectories == 6 and rec.outcomes == {"done": 5, "grading_error": 1}
    assert rec.grading_errors == {"timeout": 1}
    assert rec.times == {"wall": 60.0, "slot wait": 6.0, "llm": 36.0, "grading": 12.0}
    swe, term = rec.kinds["swe_smith"], rec.kinds["terminal"]
    assert (swe.groups, swe.trajectories, swe.graded) == (1, 4, 3)
    assert swe.mean_score == 2.0 / 3  # the grading_error trajectory is never a score
    assert (term.groups, term.trajectories, term.mean_score) == (1, 2, 1.0)


def test_without_events_the_delivered_trajectories_are_counted(tmp_path: Path):
    write_jsonl(tmp_path / "groups.jsonl", [
        {"seq": 0, "scores": [1.0], "_meta": [{"outcome": "done", "score": 1.0}]}])
    rec = RunRecord.read(tmp_path)
    assert not rec.from_events and rec.trajectories == 1 and rec.outcomes == {"done": 1}
    assert rec.completed == 0 and rec.delivered == 1


def test_an_empty_run_dir_records_nothing(tmp_path: Path):
    rec = RunRecord.read(tmp_path)
    assert rec.delivered == rec.trajectories == rec.completed == 0 and rec.mean_score is None


def test_gold_failures_name_every_task_whose_gold_did_not_score_one(tmp_path: Path):
    from rollout.record.run_record import gold_failures

    (tmp_path / "queue_state.json").write_text(json.dumps({
        "completed": {"a": "accepted", "b": "accepted"},
        "dropped": {"c": "grading_error: environment (after 3 attempts)",
                    "d": "all_scores_equal"},
        "infra_dropped": ["c"]}))
    write_jsonl(tmp_path / "events.jsonl", [
        traj("a", "done", 1.0, "accepted"), traj("a", "done", 1.0, "accepted"),
        traj("b", "done", 1.0, "accepted"), traj("b", "done", 0.0, "accepted"),
        {**traj("c", "grading_error", 0.0, "retry", grading_error="environment"),
         "error": "grading (environment): fixture 'benchmark' not found"},
        # A slot whose host died, then the retry passed: nothing wrong with e's gold.
        {**traj("e", "sandbox_error", 0.0, "retry"), "error": "verify: slot is stale"},
        traj("e", "done", 1.0, "accepted"),
        {**traj("f", "policy_error", 0.0, "retry"), "error": "policy timeout"},
        traj("f", "done", 1.0, "accepted"),
    ])
    failed = gold_failures(tmp_path)
    assert set(failed) == {"b", "c"}
    assert failed["b"] == "scored 0.0" and "fixture 'benchmark'" in failed["c"]
    assert gold_failures(tmp_path / "nothing") == {}
