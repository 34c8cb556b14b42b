"""launch.py end to end, as a user runs it: a subprocess with its own local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from rollout.leases import read_state
from rollout.tasks.loader import BUNDLED_DIR
from tests.actors.helpers import assert_well_formed, groups_jsonl
from tests.atropos_server import AtroposAPI, TestTrainer
from tests.conftest import MARKER
from tests.launch_config import finish, qwen_tokenizer_dir

ROOT = Path(__file__).resolve().parents[1]


def launch(*overrides: str, run_dir: Path, conf: str = "swe_smith") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), f"conf={conf}", f"run.dir={run_dir}",
         *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def our_processes(pattern: str) -> set[int]:
    """Processes of this test session (tests/conftest.py's marker: not another suite's on a
    shared machine) whose command line contains `pattern`."""
    out = set()
    session = os.environ[MARKER]
    for p in psutil.process_iter(["cmdline", "environ"]):
        if (pattern in " ".join(p.info.get("cmdline") or [])
                and (p.info.get("environ") or {}).get(MARKER) == session):
            out.add(p.pid)
    return out


def wait_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if psutil.pid_exists(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
    return alive


def wait_for_first_group(proc: subprocess.Popen[str], run_dir: Path,
                         timeout: float = 200.0, more_than: int = 0) -> None:
    """Until the run dir holds more than `more_than` groups (a relaunch's first group)."""
    deadline = time.monotonic() + timeout
    while len(groups_jsonl(run_dir)) <= more_than:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no group was delivered"
        time.sleep(0.2)


def read_until(proc: subprocess.Popen[str], text: str) -> str:
    """The run's output up to the first line holding `text` (read off its pipe)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never came; the output:\n" + "".join(seen)[-3000:])


def wait_for_a_relaunchs_group(proc: subprocess.Popen[str], run_dir: Path) -> None:
    """Until a relaunch on `run_dir` delivered a group of its own: once its run started (by
    then the earlier run's processes are gone and write no more groups), one more group."""
    read_until(proc, "task(s) queued")
    wait_for_first_group(proc, run_dir, more_than=len(groups_jsonl(run_dir)))


def ctrl_c_twice(proc, run_dir: Path, timeout: float) -> str:
    """Once a group is delivered, Ctrl-C; once that one is handled, Ctrl-C again. Returns
    the run's output."""
    wait_for_first_group(proc, run_dir)
    proc.send_signal(signal.SIGINT)
    read_until(proc, "Ctrl-C again to cancel")  # the first is handled before the second is sent
    proc.send_signal(signal.SIGINT)
    return finish(proc, timeout)


GOLD = ("policy=gold", f"policy.tokenizer={qwen_tokenizer_dir()}", "env.group_size=2",
        "workers.num=2", "backend.slots_per_host=4")


def two_per_repo(path: Path) -> Path:
    """Two bundled instances of each bundled repo (every instance is graded gold 1.0 and
    no-op 0.0 through real slots in tests/tasks/test_swe_smith_slots.py; what this run adds
    is the way to Atropos, for every repo)."""
    rows, seen = [], {}
    for line in (BUNDLED_DIR / "instances.jsonl").read_text().splitlines():
        row = json.loads(line)
        if seen.setdefault(row["repo"], 0) < 2:
            seen[row["repo"]] += 1
            rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gold_streams_two_instances_of_every_bundled_repo_to_atropos(tmp_path: Path):
    api = AtroposAPI(log_dir=tmp_path)
    api.start()
    trainer = TestTrainer(api.url, batch_size=4)
    trainer.register()
    stop = threading.Event()

    def pull_forever() -> None:
        while not stop.is_set():
            trainer.pull()
            time.sleep(0.2)

    puller = threading.Thread(target=pull_forever, daemon=True)
    puller.start()
    before = our_processes("-m sandbox_image")
    try:
        tasks = two_per_repo(tmp_path / "tasks.jsonl")
        proc = launch(*GOLD, "trainer=atropos", f"trainer.url={api.url}",
                      "trainer.status_interval=0.2", f"tasks.source={tasks}",
                      f"tasks.repo_sources=[{BUNDLED_DIR}]", run_dir=tmp_path / "run")
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
        deadline = time.monotonic() + 30
        expected = sorted(json.loads(x)["instance_id"] for x in tasks.read_text().splitlines())
        assert len(expected) == 12
        while len(trainer.groups()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        puller.join()
        api.stop()
    got = trainer.groups()
    assert sorted(g["group_overrides"]["task_id"] for g in got) == expected
    for g in got:
        assert_well_formed(g, 2)
        assert g["scores"] == [1.0, 1.0], g["group_overrides"]["task_id"]
    for batch in trainer.batches:  # batches are whole groups summing to batch_size
        assert sum(len(g["tokens"]) for g in batch) == 4
    assert "run finished" in out and f"{len(expected)} completed" in out
    assert wait_gone(our_processes("-m sandbox_image") - before) == set()


def test_ctrl_c_finishes_in_flight_tears_down_and_resumes(tmp_path: Path):
    run_dir = tmp_path / "run"
    before_servers = our_processes("-m sandbox_image")
    before_ray = our_processes("raylet") | our_processes("gcs_server")
    proc = launch(*GOLD, "tasks.max_items=5", "workers.num=1", "workers.groups_in_flight=1",
                  run_dir=run_dir)
    wait_for_first_group(proc, run_dir)
    proc.send_signal(signal.SIGINT)
    out = finish(proc)
    assert "run finished (SIGINT)" in out, out[-3000:]
    assert proc.returncode in (0, 1)
    first = groups_jsonl(run_dir)
    state = read_state(run_dir / "queue_state.json")
    assert len(state["completed"]) == len(first) < 5
    # Nothing left behind: no slot servers, no Ray of the run, outbox fully delivered.
    assert wait_gone(our_processes("-m sandbox_image") - before_servers) == set()
    after_ray = (our_processes("raylet") | our_processes("gcs_server")) - before_ray
    assert wait_gone(after_ray) == set()
    outbox = [json.loads(line) for line in (run_dir / "outbox.jsonl").read_text().splitlines()]
    # A group record may contain the letters "ack" anywhere (a tool output, say): go by key.
    acked = {s for rec in outbox if "ack" in rec for s in rec["ack"]}
    assert acked == {g["seq"] for g in first}
    # Relaunching with the same run dir does the rest, never a task twice.
    proc = launch(*GOLD, "tasks.max_items=5", "workers.num=1", run_dir=run_dir)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    ids = [g["task_id"] for g in groups_jsonl(run_dir)]
    assert len(ids) == len(set(ids)) == 5


def test_bad_override_is_a_one_line_error(tmp_path: Path):
    proc = launch("env.group_size=zero", run_dir=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error: env.group_size must be an integer, got 'zero'" in out
    assert "Traceback" not in out


def test_filling_in_the_policy_gives_a_new_config_and_keeps_the_loaded_one(tmp_path: Path):
    import launch
    from tests.launch_config import compose_config

    cfg = compose_config(["conf=swe_smith", f"run.dir={tmp_path}", "policy=gold"])
    assert cfg.policy.tokenizer == "embedded"  # the preset's placeholder
    server, filled = launch.start_policy_server(cfg, tmp_path, joined=False)
    assert server is None  # gold needs no server
    assert Path(filled.policy.tokenizer, "tokenizer_config.json").is_file()
    assert cfg.policy.tokenizer == "embedded" and filled.policy.type == "gold"
    assert filled.tasks is cfg.tasks and filled.trainer is cfg.trainer


def summary_figures(out: str) -> dict[str, int]:
    """The counts the summary printed at the end of `out`."""
    import re

    s = out[out.rindex("run finished"):]
    grab = {"completed": r"tasks: (\d+) completed", "dropped": r"(\d+) dropped",
            "delivered": r"groups: (\d+) delivered", "cancelled": r"cancelled: (\d+) group",
            "kind_trajectories": r"kind swe_smith: \d+ group\(s\) delivered, (\d+) trajectories"}
    figures = {k: int(m.group(1)) for k, rx in grab.items() if (m := re.search(rx, s))}
    outcomes = re.search(r"outcomes: (.*)", s)
    figures["outcomes"] = sum(int(kv.split("=")[1]) for kv in outcomes.group(1).split(", ")) \
        if outcomes else 0
    return figures


def test_double_ctrl_c_cancels_at_once_tears_down_and_the_summary_equals_the_files(
        tmp_path: Path):
    """The second Ctrl-C cancels at once (long before the grace) and still tears down.
    Trajectories of groups cancelled by the second Ctrl-C never reach the files; the
    summary counts what the files hold (it used to count the workers' own tallies, which
    include them), and says how many groups it cancelled, not the 0 left in flight after."""
    run_dir = tmp_path / "run"
    before = our_processes("-m sandbox_image")
    # Turns of 0.4-7.6 s: the members of a group finish at different times, so groups in
    # flight at the second Ctrl-C have members that already finished; and a group takes long
    # enough that a loaded machine's delay between the two Ctrl-Cs cannot see them all end.
    proc = launch("policy=simulated", f"policy.tokenizer={qwen_tokenizer_dir()}",
                  "policy.simulated.latency=4.0", "policy.simulated.latency_spread=0.9",
                  "policy.simulated.turns=2", "env.group_size=4", "workers.num=2",
                  "workers.groups_in_flight=2", "backend.slots_per_host=8",
                  "tasks.max_items=12", "run.shutdown_grace=600", run_dir=run_dir)
    out = ctrl_c_twice(proc, run_dir, timeout=200)  # far less than the 600 s grace
    assert "(forced)" in out, out[-3000:]
    figures = summary_figures(out)
    state = read_state(run_dir / "queue_state.json")
    groups = groups_jsonl(run_dir)
    events = (run_dir / "events.jsonl").read_text().splitlines()
    assert figures["completed"] == len(state["completed"]) == len(groups), out[-3000:]
    assert figures["delivered"] == len(groups)
    assert figures["outcomes"] == figures["kind_trajectories"] == len(events), out[-3000:]
    assert "cancelling 0 group(s)" not in out
    cancelled = figures.get("cancelled", 0)
    assert f"(forced): cancelled {cancelled} group(s) in flight" in out, out[-3000:]
    assert 0 < cancelled <= 12 - len(state["completed"]) - len(state["dropped"])
    assert (run_dir / "summary.txt").read_text().strip() in out
    assert not state["dropped"]  # cancelled groups went back to the queue, untried
    # The second Ctrl-C still tears everything down.
    assert wait_gone(our_processes("-m sandbox_image") - before) == set()
