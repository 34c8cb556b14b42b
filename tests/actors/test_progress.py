from rich.console import Console

from actors.cluster import Snapshot
from actors.progress import ProgressView, render
from tests.actors.helpers import gold_config


def test_live_view_and_summary_show_the_numbers(tmp_path):
    cfg = gold_config(tmp_path, "trainer=atropos", "trainer.url=http://t:8000")
    snap = Snapshot(started=0.0)
    snap.queue = {"total": 10, "completed": 3, "dropped": 1, "leased": 2, "pending": 4,
                  "drop_reasons": {"lease expired (after 3 attempts)": 1}}
    snap.sink = {"delivered": 3, "pending": 0, "drops": {"all_scores_equal": 2},
                 "mean_score": 0.25, "paused": True, "env_id": 0, "api_up": True}
    snap.pools = [{"slots_total": 8, "slots_in_use": 3}]
    snap.workers = [{"trajectories_in_flight": 3, "groups_in_flight": 2, "llm_time": 12.0,
                     "tool_time": 3.5, "outcomes": {"done": 5, "max_turns": 1}}]
    console = Console(record=True, width=120)
    console.print(render(cfg, snap))
    text = console.export_text()
    for want in ("3 done, 1 dropped, 2 leased, 4 pending of 10", "3/8", "0.250",
                 "12.0s / 3.5s", "PAUSED", "sink:all_scores_equal=2", "done=5"):
        assert want in text, (want, text)
    summary = ProgressView(cfg, enabled=False).summary(snap)
    assert "3 completed, 1 dropped, 6 unfinished, of 10" in summary
    assert "all_scores_equal=2" in summary


def test_trainer_state_says_what_blocks_progress(tmp_path):
    from actors.progress import _trainer_state

    cfg = gold_config(tmp_path, "trainer=atropos", "trainer.url=http://t:8000")
    assert "WAITING for the trainer at http://t:8000" in _trainer_state(cfg, {"paused": True})
    assert "UNREACHABLE" in _trainer_state(cfg, {"env_id": 0, "api_up": False})
    assert _trainer_state(cfg, {"env_id": 0, "api_up": True, "paused": False}) == ""
    assert _trainer_state(gold_config(tmp_path), {"paused": True}) == ""
