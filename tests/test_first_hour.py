"""What a new user hits first: mistakes fail fast with one line, exit codes tell the truth.

Every launch here is the real `launch.py` in a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.leases import read_state
from rollout.settings.overrides import OverrideError, normalize_overrides
from tests.launch_config import compose_config, qwen_tokenizer_dir
from tests.test_launch import GOLD as TWO_WORKERS, ROOT

pytestmark = pytest.mark.timeout(600)

# The runs here do one group or fail before any: one worker (each costs a process and its
# tokenizer).
GOLD = (*TWO_WORKERS, "workers.num=1")


def run_launch(*overrides: str, run_dir: Path, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "conf=swe_smith", f"run.dir={run_dir}",
         *overrides],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # bound then closed: nothing listens there


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], run_dir: Path,
                           *wanted: str) -> None:
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for w in wanted:
        assert w in errors[0], errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


# --- overrides -----------------------------------------------------------------------------


def test_a_typo_gets_did_you_mean():
    with pytest.raises(OverrideError, match=r"unknown key env.group_sise; did you mean env.group_size\?"):
        normalize_overrides(["env.group_sise=4"])
    with pytest.raises(OverrideError, match="did you mean tasks.test_timeout"):
        normalize_overrides(["tasks.test_timout=5"])
    with pytest.raises(OverrideError, match="backend.memory_mb is a slot limit.*sandbox.memory_mb"):
        normalize_overrides(["backend.memory_mb=512"])
    with pytest.raises(OverrideError, match="ray is a config section"):
        normalize_overrides(["ray=cluster"])


def test_every_documented_key_is_a_plain_override(tmp_path):
    # None of these are in the preset YAML; all are fields of the typed config.
    cfg = compose_config([
        "conf=swe_smith", f"run.dir={tmp_path}", "policy=gold",
        f"policy.tokenizer={qwen_tokenizer_dir()}", f"tasks.cache_dir={tmp_path}/cache",
        "tasks.python=/opt/py/bin/python", "tasks.repo_sources=[/srv/mirrors]",
        "sandbox.output_cap=1024", "policy.seed=7", "agent.max_calls_per_turn=3",
        "sandbox.env.FOO=bar", "trainer=atropos", "trainer.send_batch=2",  # atropos's key
    ])
    assert cfg.tasks.cache_dir == f"{tmp_path}/cache" and cfg.tasks.python == "/opt/py/bin/python"
    assert cfg.tasks.repo_sources == ["/srv/mirrors"] and cfg.sandbox.output_cap == 1024
    assert cfg.policy.seed == 7 and cfg.agent.max_calls_per_turn == 3
    assert cfg.sandbox.env == {"FOO": "bar"} and cfg.trainer.send_batch == 2
    # Group selections, Hydra's keys and explicit +/~ pass through untouched.
    assert normalize_overrides(["policy=gold", "hydra.verbose=true", "+x.y=1"]) == [
        "policy=gold", "hydra.verbose=true", "+x.y=1"]


def test_launch_refuses_a_typo_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_launch("env.group_sise=4", run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, "did you mean env.group_size?")


# --- fail fast, before Ray -----------------------------------------------------------------


def test_missing_task_source_fails_fast(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_launch(*GOLD, f"tasks.source={tmp_path}/nope.jsonl", run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, "nope.jsonl", "does not exist")


def test_unreachable_policy_server_fails_fast(tmp_path):
    run_dir = tmp_path / "run"
    url = closed_port_url()
    proc = run_launch("policy=openai_completions", f"policy.base_url={url}", "policy.model=m",
                      f"policy.tokenizer={qwen_tokenizer_dir()}", run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, "policy server", url, "nothing listens")


def test_unreachable_trainer_fails_fast(tmp_path):
    run_dir = tmp_path / "run"
    url = closed_port_url()
    proc = run_launch(*GOLD, "trainer=atropos", f"trainer.url={url}", run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, "Atropos API", url, "nothing listens")


def test_missing_bubblewrap_fails_fast(tmp_path):
    # A PATH with git and python but no bwrap.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "sh"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    run_dir = tmp_path / "run"
    proc = run_launch(*GOLD, run_dir=run_dir, env={"PATH": str(bin_dir)})
    assert_one_line_exit_2(proc, run_dir, "bubblewrap", "apt-get install bubblewrap")


def test_a_config_error_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_launch("env.group_size=zero", run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, "env.group_size must be an integer")


# --- the interpreter a slot is told to use --------------------------------------------------


def make_tmp_venv(where: Path) -> Path:
    """A virtualenv under /tmp (hidden inside slots by their private /tmp) whose packages are
    this interpreter's, found through a .pth file, as a user's own venv would hold them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   timeout=120)
    (site,) = where.glob("lib/python3*/site-packages")
    (site / "this-env.pth").write_text("\n".join(p for p in sys.path if p.endswith("-packages")))
    return where / "bin" / "python"


def test_a_venv_under_tmp_grades_gold_one(tmp_path):
    """`tasks.python` in a venv under /tmp: the slot sees it, so gold scores 1.0 (it used to
    be `python: not found`, graded as a silent 0.0)."""
    python = make_tmp_venv(Path("/tmp") / f"rollout-test-venv-{os.getpid()}")
    try:
        assert str(python).startswith("/tmp/")
        run_dir = tmp_path / "run"
        proc = run_launch(*GOLD, "run.max_groups=1", f"tasks.python={python}",
                          run_dir=run_dir, timeout=500)
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        (group,) = [json.loads(line) for line in (run_dir / "groups.jsonl").read_text().splitlines()]
        assert group["scores"] and set(group["scores"]) == {1.0}
    finally:
        shutil.rmtree(python.parents[1], ignore_errors=True)


# --- honest exit codes ---------------------------------------------------------------------


def test_grading_that_cannot_start_is_an_infra_failure_not_a_zero(tmp_path):
    """A test command that cannot start (exit 127) is never a 0.0 sent to the trainer: the
    group is retried, then dropped with the reason, the summary says so, exit is 1."""
    run_dir = tmp_path / "run"
    proc = run_launch(*GOLD, "run.max_groups=1", "queue.max_attempts=2",
                      "tasks.python=/nonexistent/bin/python", run_dir=run_dir, timeout=500)
    out = proc.stdout
    assert proc.returncode == 1, (out[-3000:], proc.stderr[-3000:])
    assert (run_dir / "groups.jsonl").read_text().strip() == ""  # nothing scored, nothing sent
    state = read_state(run_dir / "queue_state.json")
    (reason,) = state["dropped"].values()
    assert reason.startswith("grading_error") and "after 2 attempts" in reason
    assert "1 for infrastructure failures" in out
    assert "because grading could not run" in out
    assert "the test command could not start" in out
    # launch.log ends with the summary
    log_tail = (run_dir / "launch.log").read_text().rstrip().splitlines()[-12:]
    assert any("run finished" in line for line in log_tail)
    assert (run_dir / "summary.txt").read_text().strip().splitlines()[-1] in log_tail


def test_help_lists_only_selectable_groups():
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Groups", 1)[1].split("== Config", 1)[0]
    assert "ray" not in groups and "scripted" in groups
    for option in (ROOT / "conf" / "policy").glob("*.yaml"):
        assert option.stem in groups, option.stem


def test_every_policy_option_composes(tmp_path):
    for option in sorted((ROOT / "conf" / "policy").glob("*.yaml")):
        extra = [] if option.stem in ("embedded", "gold", "scripted") else [
            "policy.base_url=http://h:1", "policy.model=m"]
        cfg = compose_config(["conf=swe_smith", f"run.dir={tmp_path}", f"policy={option.stem}",
                              f"policy.tokenizer={qwen_tokenizer_dir()}", *extra])
        assert cfg.policy.type == option.stem


# --- unknown group options -----------------------------------------------------------------


@pytest.mark.parametrize("override, options", [
    ("conf=nonexistent", "conf options: math_repl, swe_smith, terminal"),
    ("policy=nosuch", "policy options: embedded, gold, openai_chat, openai_completions"),
])
def test_an_unknown_group_option_is_one_line_listing_the_options(tmp_path, override, options):
    run_dir = tmp_path / "run"
    proc = run_launch(override, run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, override.replace("=", " '") + "'", options)
    assert "Config search path" not in proc.stderr  # Hydra's own multi-line message


# --- resume --------------------------------------------------------------------------------


def tree(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


def summary_of(out: str) -> str:
    return out[out.rindex("run finished"):]


def test_resume_keeps_the_saved_config_and_refuses_changes(tmp_path):
    run_dir = tmp_path / "run"
    first = run_launch(*GOLD, "tasks.max_items=1", "env.group_size=1", run_dir=run_dir,
                       timeout=300)
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-3000:])
    before = tree(run_dir)
    # Overrides that change the saved config: refused in one line, the run dir as it was.
    proc = run_launch("env.group_size=4", "agent.max_turns=5", run_dir=run_dir)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "env.group_size: 1 -> 4" in error and "agent.max_turns: 30 -> 5" in error, error
    assert "run.resume_overrides=true" in error
    proc = run_launch("policy=embedded", "run.resume_overrides=true", run_dir=run_dir)
    assert proc.returncode == 2 and "policy: gold -> embedded" in proc.stderr, proc.stderr[-2000:]
    assert tree(run_dir) == before
    # The run dir alone takes the saved (gold) config, not the default embedded policy, and
    # the summary reports what the run dir records (both runs' groups), not only this run's;
    # the flag applies a change: the config says so, the run does one more task.
    proc = run_launch("tasks.max_items=2", "run.resume_overrides=true", run_dir=run_dir,
                      timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "changing tasks.max_items: 1 -> 2" in (run_dir / "launch.log").read_text()
    assert "max_items: 2" in (run_dir / "config.yaml").read_text()
    summary = summary_of(proc.stdout)
    assert "tasks: 2 completed" in summary and "groups: 2 delivered" in summary, summary
    assert "kind swe_smith: 2 group(s) delivered, 2 trajectories" in summary, summary
    assert not (run_dir / "embedded-policy.log").exists()
    assert len((run_dir / "groups.jsonl").read_text().splitlines()) == 2


# --- failures once the run dir exists --------------------------------------------------------


def test_a_start_failure_writes_its_cause_to_launch_log_and_summary(tmp_path):
    run_dir = tmp_path / "run"
    # No slot server starts within a millisecond: the sandbox pool cannot start.
    proc = run_launch(*GOLD, "tasks.max_items=1", "backend.host_start_timeout=0.001",
                      run_dir=run_dir, timeout=300)
    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "the run failed at start" in error and "backend.host_start_timeout" in error, error
    assert "Traceback" not in proc.stdout + proc.stderr
    assert error in (run_dir / "launch.log").read_text()
    summary = (run_dir / "summary.txt").read_text()
    assert summary.startswith("run failed at start") and "backend.host_start_timeout" in summary


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_dead_worker_says_why_once(tmp_path):
    """A worker process that dies (here SIGKILLed, as the OOM killer would) is replaced up to
    3 x workers.num times; its cause is said once, then counted, and the run ends with exit
    1 and the count. (A worker that could not build its policy is refused by preflight.)"""
    import signal
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "conf=swe_smith", f"run.dir={run_dir}",
         "policy=simulated", "policy.simulated.latency=60", "tasks.max_items=1",
         "workers.num=1"],
        cwd=ROOT, env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                       "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed: set[int] = set()
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in _descendants(proc.pid):
                if pid not in killed and _cmdline(pid).startswith("ray::RolloutWorker"):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.2)  # a scan of the process table, not a wait for an outcome
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = out + err
    assert proc.returncode == 1, out[-3000:]
    assert len(killed) == 4, (killed, out[-3000:])
    assert "RayTaskError" not in out
    causes = [ln for ln in out.splitlines() if "died: ActorDiedError" in ln]
    assert len(causes) == 1, out[-3000:]
    assert "(the same cause, 4 times now)" in out, out[-3000:]
    assert "rollout workers died 4 time(s): ActorDiedError" in out, out[-3000:]
