"""logger=wandb: the gold run's offline W&B run holds the expected keys, the rollout table and
the config; a broken wandb (import failure, bad dir) never stops a run."""

from __future__ import annotations

import json
import logging
import sys

from actors.cluster import Snapshot
from actors.observe import RunObserver
from rollout.settings.config import MetricsConfig
from rollout.report import REPORT_FILE
from rollout.record.wandb_log import TABLE_COLUMNS, LoggerConfig
from tests.observe.conftest import GOLD_TASKS, GROUP_SIZE
from tests.observe.wandb_file import history_and_config


def test_the_gold_run_wrote_an_offline_wandb_run_with_the_expected_keys(gold_run):
    runs = list((gold_run.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    steps, config = history_and_config(next(runs[0].glob("run-*.wandb")))
    keys = set().union(*steps)
    for key in ("generate/avg_reward", "generate/avg_num_turns", "generate/num_trajectories",
                "generate/num_timeout_trajectories", "generate/num_error_trajectories",
                "train_perf/items_sent", "train_perf/items_rejected", "train_perf/grading_time_mean",
                "train_perf/tool_call_time_mean", "train_perf/llm_call_time_mean",
                "progress/tasks_completed", "progress/slots_busy", "time/elapsed"):
        assert key in keys, key
    assert sum(s.get("generate/num_trajectories", 0) for s in steps) == GOLD_TASKS * GROUP_SIZE
    assert sum(s.get("train_perf/items_sent", 0) for s in steps) == GOLD_TASKS
    assert {s["generate/avg_reward"] for s in steps if "generate/avg_reward" in s} == {1}
    table = next(s for s in steps if s.get("rollouts/_type") == "table-file")
    assert table["rollouts/nrows"] == GOLD_TASKS * GROUP_SIZE  # all of them: under table_size
    data = json.loads((runs[0] / "files" / table["rollouts/path"]).read_text())
    assert data["columns"] == TABLE_COLUMNS
    assert all(row[2] == "done" and row[3] == 1 and "git apply" in row[6] for row in data["data"])
    assert config["env"]["group_size"] == GROUP_SIZE  # the run config
    assert config["policy"]["type"] == "gold" and config["sandbox"]["env"] == {}


def _snap() -> Snapshot:
    snap = Snapshot(started=0.0)
    snap.pools = [{"slots_in_use": 0, "slots_total": 2}]
    return snap


async def _a_run_with(logger: LoggerConfig, run_dir) -> None:
    obs = RunObserver(run_dir, MetricsConfig(), logger, "r1", {"a": 1})
    await obs.start(None)
    obs.tick(_snap())
    assert await obs.close(_snap()) == run_dir / REPORT_FILE  # the run's own output is there
    assert obs.wandb.failed


async def test_a_broken_wandb_never_stops_a_run(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
        await _a_run_with(LoggerConfig(type="wandb"), tmp_path)
        monkeypatch.delitem(sys.modules, "wandb")
        a_file = tmp_path / "not-a-dir"
        a_file.write_text("")
        await _a_run_with(LoggerConfig(type="wandb", dir=str(a_file / "wandb")), tmp_path)
    failures = [r.message for r in caplog.records if r.message.startswith("wandb:")]
    assert len(failures) == 2, failures  # once per run
    assert "ImportError" in failures[0] or "ModuleNotFoundError" in failures[0]
    assert "the run goes on without wandb" in failures[1]


def test_the_config_sent_to_wandb_has_no_credentials():
    from actors.cluster import redacted

    cfg = {"env": {"group_size": 2}, "sandbox": {"env": {"HF_TOKEN": "hf_x"}},
           "backend": {"secrets": ["my-keys"], "env": {}, "token": "t"}}
    assert redacted(cfg) == {"env": {"group_size": 2}, "sandbox": {"env": "<redacted>"},
                             "backend": {"secrets": "<redacted>", "env": {}, "token": "<redacted>"}}
