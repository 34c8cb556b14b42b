"""`python -m rollout.trainer.consume`, the stand-in trainer: a real atroposlib `run-api`, a
real gold launch with trainer=atropos, and the consumer as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rollout.trainer.consume import describe_batch
from tests.actors.helpers import assert_well_formed, groups_jsonl
from tests.atropos_server import AtroposAPI, free_port
from tests.launch_config import finish
from tests.test_launch import GOLD, ROOT, launch

SENT_KEYS = ("tokens", "masks", "scores", "inference_logprobs", "overrides", "group_overrides")


def consume(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rollout.trainer.consume", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_consumer_receives_what_a_gold_run_sends(tmp_path: Path):
    api = AtroposAPI(log_dir=tmp_path)
    api.start()
    out_file = tmp_path / "batches.jsonl"
    # batch size 2 = one group of 2: two groups make two batches, then it stops
    consumer = consume("--url", api.url, "--batch-size", "2", "--batches", "2",
                       "--out", str(out_file), "--poll", "0.2")
    try:
        run_dir = tmp_path / "run"
        proc = launch(*GOLD, "trainer=atropos", f"trainer.url={api.url}", "run.max_groups=2",
                      "trainer.status_interval=0.2", run_dir=run_dir)
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
        printed, err = consumer.communicate(timeout=60)
        assert consumer.returncode == 0, err
    finally:
        if consumer.poll() is None:
            consumer.kill()
        api.stop()
    sent = {g["task_id"]: g for g in groups_jsonl(run_dir)}  # what the sink delivered
    assert len(sent) == 2
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert sorted(x["batch"] for x in lines) == [1, 2]
    got = {x["group"]["group_overrides"]["task_id"]: x["group"] for x in lines}
    assert got.keys() == sent.keys()
    for task_id, group in got.items():
        assert_well_formed(group, 2)
        assert group["scores"] == [1.0, 1.0]
        for key in SENT_KEYS:  # exactly what was sent, token for token
            assert group[key] == sent[task_id][key], (task_id, key)
    # what it printed: the registration, each batch and its groups, the total
    assert printed.startswith("registered as the trainer: batch_size 2")
    by_batch = {x["batch"]: [x["group"]] for x in lines}
    for n in (1, 2):
        assert "\n".join(describe_batch(n, by_batch[n])) in printed
    for task_id, group in sent.items():
        assert (f"task {task_id}: scores [1.0, 1.0], tokens {[len(t) for t in group['tokens']]}"
                in printed)
    assert printed.rstrip().endswith(f"done: 2 group(s) received, written to {out_file}")


def test_nothing_listening_is_a_one_line_error():
    proc = consume("--url", f"http://127.0.0.1:{free_port()}", "--wait", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.count("\n") == 1 and err.startswith("error: nothing answers at ")
    assert "run-api" in err and "Traceback" not in err


def test_describe_batch_counts_trained_tokens_and_names_outcomes():
    group = {"tokens": [[1, 2, 3], [4, 5]], "masks": [[-100, 2, 3], [-100, -100]],
             "scores": [1.0, 0.0], "group_overrides": {"task_id": "t1"},
             "overrides": [{"outcome": "done"}, {"outcome": "max_turns"}]}
    assert describe_batch(3, [group]) == [
        "batch 3: 1 group(s), 2 sequence(s)",
        "  task t1: scores [1.0, 0.0], tokens [3, 2], trained tokens [2, 0], "
        "outcomes done, max_turns"]
