"""launch.py with `backend=nomad` end to end, against the Nomad emulator as a process: every
allocation a real slot server, the run driven as a user drives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.leases import read_state
from rollout.tasks.loader import BUNDLED_DIR
from tests.actors.helpers import groups_jsonl
from tests.nomad_emulator.__main__ import READY
from tests.launch_config import finish
from tests.test_launch import GOLD, ROOT, launch, wait_for_a_relaunchs_group, wait_for_first_group

TOKEN = "e2e-emulator-acl-token-42"


class Emulator:
    def __init__(self, proc: subprocess.Popen[str], url: str, control_url: str) -> None:
        self.proc, self.url, self.control_url = proc, url, control_url

    def get(self, what: str) -> Any:
        with urllib.request.urlopen(f"{self.control_url}/_emulator/{what}", timeout=30) as r:
            return json.loads(r.read())

    def post(self, what: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(f"{self.control_url}/_emulator/{what}",
                                     data=json.dumps(body or {}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def running(self) -> list[dict[str, Any]]:
        return [a for a in self.get("state")["allocs"] if a["running"]]


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    env = {**os.environ, "NOMAD_EMULATOR_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.nomad_emulator", "--data-dir", str(tmp_path / "nomad")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(READY), line
    info = json.loads(line[len(READY):])
    # launch() passes this process's environment on: the token goes the CLI's way.
    monkeypatch.setenv("NOMAD_ADDR", info["url"])
    monkeypatch.setenv("NOMAD_TOKEN", TOKEN)
    emu = Emulator(proc, info["url"], info["control_url"])
    yield emu
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


NOMAD = (*GOLD, "backend=nomad", f"backend.python={sys.executable}", "backend.min_hosts=1",
         "backend.max_hosts=4", "backend.health_check_interval=1", "backend.idle_scale_down=3")


SECOND_IMAGE = "rollout-bundled-py311-b"


def _two_image_tasks(path: Path, n: int = 8) -> Path:
    """`n` of the bundled instances, every other one on a second host image (every instance
    is graded through real slots in tests/tasks/test_swe_smith_slots.py; here what is
    Nomad's is the jobs and images)."""
    rows = [json.loads(x) for x in (BUNDLED_DIR / "instances.jsonl").read_text().splitlines()
            if x.strip()][:n]
    for i, row in enumerate(rows):
        if i % 2:  # a second label for the same host view (sandbox.images maps it)
            row["image_name"] = SECOND_IMAGE
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _assert_nothing_left(emulator: Emulator) -> None:
    state = emulator.get("state")
    assert state["jobs"] == [] and state["running_pids"] == [], state


def _wait(predicate: Any, timeout: float = 200.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_gold_on_two_images_through_a_killed_allocation_and_an_api_outage(
        tmp_path: Path, emulator: Emulator) -> None:
    tasks = _two_image_tasks(tmp_path / "two_images.jsonl")
    run_dir = tmp_path / "run"
    # No idle scale-down during the run: the allocation killed below is then a host the
    # fleet still holds (one it retired itself would never fail).
    proc = launch(*NOMAD, f"tasks.source={tasks}", f"tasks.repo_sources=[{BUNDLED_DIR}]",
                  f"+sandbox.images.{SECOND_IMAGE}={{source: host}}",
                  "backend.idle_scale_down=600", run_dir=run_dir)
    wait_for_first_group(proc, run_dir)
    victim = emulator.running()[0]
    emulator.post(f"kill_alloc/{victim['ID']}")
    emulator.post("outage", {"seconds": 30})
    _wait(lambda: not emulator.get("state")["api_up"])
    _wait(lambda: emulator.get("state")["api_up"], timeout=120)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    # Every task delivered once, all gold, none dropped, through the fault and the outage.
    expected = sorted(json.loads(x)["instance_id"] for x in tasks.read_text().splitlines())
    groups = groups_jsonl(run_dir)
    assert sorted(g["task_id"] for g in groups) == expected
    assert all(g["scores"] == [1.0, 1.0] for g in groups), [g["scores"] for g in groups]
    state = read_state(run_dir / "queue_state.json")
    assert len(state["completed"]) == len(expected) and not state["dropped"]
    history = emulator.get("history")
    assert any(e["event"] == "failed" and e["alloc"] == victim["ID"] for e in history)
    placed_after = [e for e in history if e["event"] == "running"
                    and e["t"] > next(h["t"] for h in history if h["event"] == "fault_kill")]
    assert placed_after  # a replacement host joined
    # One job per host: registered to start it, purged to retire it (never a scale call).
    registers = [e for e in history if e["event"] == "register"]
    purges = [e for e in history if e["event"] == "deregister" and e["purge"]]
    assert not any(e["event"] == "scale" for e in history)
    assert len(registers) >= 3  # the default host and at least one per task image
    assert {e["job"] for e in purges} == {e["job"] for e in registers}
    groups_seen = {g for e in registers for g in e["counts"]}
    assert len({g for g in groups_seen if g.startswith("rollout-bundled-py311")}) == 2
    live, peak = set(), 0  # hosts up at once: scaled up under demand
    for e in history:
        if e["event"] == "register":
            live.add(e["job"])
        elif e["event"] == "deregister":
            live.discard(e["job"])
        peak = max(peak, len(live))
    assert peak >= 2 and history[-1]["event"] == "deregister"
    _assert_nothing_left(emulator)


def test_sigkilled_driver_then_a_sigterm_on_the_new_run_leaves_nothing(
        tmp_path: Path, emulator: Emulator) -> None:
    """SIGTERM here, SIGINT in tests/test_launch_modal.py and tests/test_launch.py: the driver
    handles both the same way whatever the backend, so each backend's teardown mid-run is
    driven once, and each signal once, end to end."""
    run_dir = tmp_path / "run"
    proc = launch(*NOMAD, "tasks.max_items=6", "workers.num=1", run_dir=run_dir)
    wait_for_first_group(proc, run_dir)
    assert emulator.get("state")["jobs"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    leftover = emulator.get("state")["jobs"]
    assert leftover  # a dead driver cannot deregister: the job is still there
    before = len(groups_jsonl(run_dir))
    proc = launch(*NOMAD, "tasks.max_items=6", "workers.num=1", run_dir=run_dir)  # resumes
    wait_for_a_relaunchs_group(proc, run_dir)
    assert emulator.running()
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert proc.returncode in (0, 1), out[-3000:]
    assert "run finished (SIGTERM)" in out, out[-3000:]
    ids = [g["task_id"] for g in groups_jsonl(run_dir)]
    assert len(ids) == len(set(ids)) > before  # the new run went on, never a task twice
    _assert_nothing_left(emulator)  # the dead driver's job as well as the new run's


def test_unreachable_nomad_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """No Nomad at the configured address: refused before Ray starts, no run dir."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    run_dir = tmp_path / "run"
    proc = launch(*NOMAD, f"backend.address={address}", run_dir=run_dir)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert f"error: the Nomad API at backend.address={address} is not reachable" in out
    assert "Traceback" not in out and not run_dir.exists()
