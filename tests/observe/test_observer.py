"""The driver's RunObserver: timeline points, the report refreshed during the run and
written at its end, and nothing of it able to stop a run."""

from __future__ import annotations

import json
import logging

from actors.cluster import Snapshot
from actors.observe import RunObserver
from rollout.settings.config import MetricsConfig
from rollout.report import REPORT_FILE
from rollout.report.data import TIMELINE_FILE
from rollout.record.stats import WorkerStats


def _snap() -> Snapshot:
    snap = Snapshot(started=0.0)
    snap.queue = {"completed": 1, "pending": 2}
    snap.pools = [{"slots_in_use": 1, "slots_total": 4,
                   "images": {"img": {"hosts": 1, "slots": 4, "in_use": 1}}}]
    snap.workers = [WorkerStats(trajectories_done=2, trajectories_in_flight=1),
                    WorkerStats(trajectories_done=1)]
    snap.sink = {"delivered": 1, "paused": True, "trainer_queue": 5}
    return snap


def _timeline(run_dir):
    return [json.loads(x) for x in (run_dir / TIMELINE_FILE).read_text().splitlines()]


async def test_the_report_is_refreshed_during_the_run_and_final_at_the_end(tmp_path):
    obs = RunObserver(tmp_path, MetricsConfig(report_interval=3600))
    obs.tick(_snap())
    assert obs._building is not None  # the first tick starts a build, in a thread
    await obs._building
    assert "in progress" in (tmp_path / REPORT_FILE).read_text()
    obs.tick(_snap())  # within TIMELINE_EVERY and report_interval: nothing new
    assert obs._building is None and len(_timeline(tmp_path)) == 1
    point = _timeline(tmp_path)[0]
    assert point["slots_in_use"] == 1 and point["slots_total"] == 4 and point["trajectories"] == 3
    assert point["images"] == {"img": {"hosts": 1, "slots": 4, "in_use": 1}}
    assert point["trainer_paused"] is True and point["trainer_queue"] == 5
    await obs.close(_snap())
    assert _timeline(tmp_path)[-1]["final"] is True
    assert "finished" in (tmp_path / REPORT_FILE).read_text()


async def test_a_broken_run_dir_is_logged_once_and_never_raises(tmp_path, caplog):
    gone = tmp_path / "gone"
    obs = RunObserver(gone, MetricsConfig())
    with caplog.at_level(logging.WARNING):
        obs.tick(_snap())
        await obs._building
        obs.tick(_snap(), final=True)
        assert await obs.close(_snap()) is None
    warned = [r.message for r in caplog.records if "the run goes on" in r.message]
    assert len(warned) == 3  # the timeline once, the refresh once, the final report once
    off = RunObserver(tmp_path, MetricsConfig(enabled=False))
    off.tick(_snap())
    assert await off.close(_snap()) is None and list(tmp_path.iterdir()) == []


async def test_a_taken_metrics_port_is_logged_and_the_run_goes_on(tmp_path, caplog):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        obs = RunObserver(tmp_path, MetricsConfig(port=port))
        with caplog.at_level(logging.ERROR):
            await obs.start(None)
        assert obs.metrics_url is None
        assert any(f"cannot serve /metrics on 127.0.0.1:{port}" in r.message for r in caplog.records)
        obs.tick(_snap())
        assert await obs.close(_snap()) == tmp_path / REPORT_FILE
