"""Replay: every gold trajectory's recorded tool calls, re-run in fresh real slots and
re-graded, reproduce the recorded score; a trajectory whose recorded actions were tampered
with is reported as a mismatch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from rollout.record.events import EVENTS_FILE, read_events
from rollout.replay import Replayer, recorded_calls
from tests.observe.conftest import GOLD_TASKS, GROUP_SIZE

ROOT = Path(__file__).resolve().parents[2]


async def test_every_gold_trajectory_reproduces_its_score(gold_run):
    replayer = Replayer(gold_run.run_dir)
    results = await replayer.replay(replayer.lines)
    assert len(results) == GOLD_TASKS * GROUP_SIZE
    for r in results:
        assert r.recorded == 1.0 and r.replayed == 1.0 and r.reproduced, r.describe()
        assert r.reason == "all tests passed" and r.exit_mismatches == []


def test_a_tampered_trajectory_is_a_mismatch(gold_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(gold_run.run_dir, copy, ignore=shutil.ignore_patterns("wandb"))
    lines = list(read_events(copy))
    victim = lines[0]
    for kind, _, _, f in victim["ev"]:  # the grader reads what the fix wrote: change the fix
        if kind == "tool" and f["name"] == "write_file":
            f["args"]["content"] = "not a patch\n"
    assert recorded_calls(victim)[0][0].arguments["content"] == "not a patch\n"
    (copy / EVENTS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = subprocess.run([sys.executable, "-m", "rollout.replay", str(copy),
                           "--trajectory", victim["id"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith(victim["id"]) and "MISMATCH" in proc.stdout
    assert "recorded score 1, replayed 0" in proc.stdout and "tool exit codes differ" in proc.stdout
    unknown = subprocess.run([sys.executable, "-m", "rollout.replay", str(copy),
                              "--trajectory", "no-such-trajectory"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no trajectory")
