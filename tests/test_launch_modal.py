"""launch.py end to end with `backend=modal` against the fake modal SDK (tests/fake_modal):
the bundled instances all score 1.0, and no sandbox of the run outlives it, however the
driver ends (normal exit, Ctrl-C, SIGTERM, SIGKILL followed by a restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil


from rollout.tasks import load_tasks
from tests.actors.helpers import groups_jsonl
from tests.fake_modal import _control
from tests.launch_config import finish, qwen_tokenizer_dir
from tests.sandbox.modal_support import FAKE_SDK, fake_modal, modal_config  # noqa: F401
from tests.test_launch import wait_for_a_relaunchs_group, wait_for_first_group
from sandbox_image.config import SlotLimits

ROOT = Path(__file__).resolve().parents[1]
MODAL = ("backend=modal", f"backend.sdk={FAKE_SDK}", "backend.app_name=rollout-e2e",
         "policy=gold", f"policy.tokenizer={qwen_tokenizer_dir()}", "env.group_size=2",
         "backend.slots_per_host=4")


def launch(*overrides: str, run_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "conf=swe_smith", f"run.dir={run_dir}",
         *MODAL, *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


RAY_AGENTS = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def _title(p: psutil.Process) -> str:
    """A live process's command (its first word), "" once it is gone or a zombie."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return ""
        return (p.cmdline() or [""])[0]
    except psutil.Error:
        return ""


def run_sandboxes(run_dir: Path) -> set[str]:
    """Running sandboxes of the run in the fake (any pool, any driver session)."""
    return _control.running_ids(run_id=(run_dir / "run_id").read_text().strip())


async def test_sigkilled_driver_then_a_ctrl_c_on_the_restart_reaps_only_its_run(
        fake_modal, tmp_path: Path) -> None:  # noqa: F811
    """SIGINT here, SIGTERM in tests/test_nomad_launch.py (the driver handles both the same
    way whatever the backend): each backend's teardown mid-run once, each signal once."""
    # A sandbox of another run of the same app, alive throughout: it must be left alone.
    stranger = modal_config(app_name="rollout-e2e").create(SlotLimits(), "otherrun-0")
    theirs = (await stranger.start_host(None, 1)).host_id
    try:
        run_dir = tmp_path / "run"
        proc = launch("tasks.max_items=6", "workers.num=1", run_dir=run_dir)
        wait_for_first_group(proc, run_dir)
        first = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()  # the driver only: its Ray processes share its fate, no teardown runs
        proc.communicate(timeout=120)
        left = run_sandboxes(run_dir)
        assert left, "a SIGKILLed driver's sandboxes keep running on Modal (and in the fake)"
        before = len(groups_jsonl(run_dir))
        proc = launch("tasks.max_items=6", "workers.num=1", run_dir=run_dir)
        wait_for_a_relaunchs_group(proc, run_dir)
        assert left.isdisjoint(_control.running_ids())  # reaped at the restart's start
        assert run_sandboxes(run_dir), "no sandbox was running mid-run"
        proc.send_signal(signal.SIGINT)
        out = finish(proc)
        assert "run finished (SIGINT)" in out, out[-3000:]
        assert run_sandboxes(run_dir) == set()
        ids = [g["task_id"] for g in groups_jsonl(run_dir)]
        assert len(ids) == len(set(ids)) > before  # the restart went on, never a task twice
        assert _control.running(theirs)
        # Of the killed driver's processes only Ray's own agents may still run: they notice
        # their raylet's death about a minute later (Ray's check, not ours); end them here.
        lingering = {p: title for p in first if (title := _title(p))}
        assert set(lingering.values()) <= RAY_AGENTS, lingering
        for p in lingering:
            p.kill()
    finally:
        await stranger.close()


def test_gold_with_a_sandbox_terminated_mid_run_scores_every_task_once(
        fake_modal, tmp_path: Path) -> None:  # noqa: F811
    # 8 tasks: every bundled instance is graded through real slots in
    # tests/tasks/test_swe_smith_slots.py; what is Modal's here is its sandboxes (several at
    # once, one ended by Modal, each reaped at the end).
    run_dir = tmp_path / "run"
    proc = launch("tasks.max_items=8", "workers.num=2", "backend.max_hosts=2",
                  "backend.health_check_interval=1", run_dir=run_dir)
    wait_for_first_group(proc, run_dir)
    victims = run_sandboxes(run_dir)
    assert victims
    victim = sorted(victims)[0]
    assert _control.signal_supervisor(victim)  # Modal ended it (preempted, crashed, ...)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert _control.exit_record(victim)["reason"] == "terminated"
    groups = groups_jsonl(run_dir)
    ids = [g["task_id"] for g in groups]
    bundled = {t.task_id for t in load_tasks({"source": "bundled"})}
    assert len(ids) == len(set(ids)) == 8 and set(ids) <= bundled  # every task once
    for g in groups:
        assert g["scores"] == [1.0, 1.0], g["task_id"]
    assert len(_control.all_ids()) > len(victims)  # a replacement sandbox joined
    assert run_sandboxes(run_dir) == set()
