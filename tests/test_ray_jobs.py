"""A Ray cluster of two raylets started as README's "Scaling out with Ray" starts one (token
auth on: `ray get-auth-token --generate`, `RAY_AUTH_MODE=token`, `ray start --head`, `ray start
--address`), and a run submitted to it through Ray Jobs (`ray job submit --working-dir . --
python launch.py ...`: the dashboard's job server), as a user does it.

The commands are README's own (checked below), plus the flags that keep this cluster apart
from the other Rays on this machine: its ports, its temp dir, a HOME of its own (the token
file), one CPU per node. Only the processes this test started are stopped, by their process
group; `ray stop` would stop every Ray here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.actors.helpers import groups_jsonl
from tests.launch_config import qwen_tokenizer_dir

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

# README's commands, word for word (the test appends only the isolating flags above).
GENERATE = "ray get-auth-token --generate"
HEAD = "ray start --head --port=6379 --dashboard-host=127.0.0.1"
WORKER = "ray start --address=HEAD_IP:6379"
SUBMIT = "ray job submit --address=http://127.0.0.1:8265 --working-dir . -- python launch.py"
RUN = "conf=math_repl policy=gold tasks.max_items=4 env.group_size=2 workers.num=2"

pytestmark = pytest.mark.timeout(600)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def argv(readme_command: str, **replace: str) -> list[str]:
    words = readme_command.split()
    for old, new in replace.items():
        words = [w.replace(old, new) for w in words]
    return [RAY if w == "ray" else w for w in words]


def processes_in_groups(pgids: set[int]) -> set[psutil.Process]:
    """Every process of these process groups, and everything they started (Ray's workers
    get process groups of their own)."""
    found: set[psutil.Process] = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in pgids:
                found.add(p)
                found.update(p.children(recursive=True))
        except (psutil.Error, ProcessLookupError):
            pass
    return found


def stop_groups(pgids: set[int]) -> set[psutil.Process]:
    """SIGTERM the groups, SIGKILL what is left after 5 s (the GCS and the raylets drain
    for longer than that; nothing of this throwaway cluster needs draining: `ray stop
    --force`). Returns what is still alive (nothing, unless something is badly wrong)."""
    procs = processes_in_groups(pgids)
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=30)
    return set(alive)


@pytest.fixture
def token_cluster():
    """Two raylets on this machine with token auth on; yields (env, gcs_port, dash_port,
    home). The temp dir is short: Ray's socket paths must fit in 107 bytes."""
    home = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    gcs, dash, agent_head, agent_worker, client = free_ports(5)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    isolate = [f"--temp-dir={home}/ray", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               "--disable-usage-stats"]
    pgids: set[int] = set()

    def start(words: list[str]) -> None:
        proc = subprocess.Popen(words, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        pgids.add(proc.pid)  # its own group: what it leaves running keeps that group
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]

    try:
        token = subprocess.run(argv(GENERATE), env=env, capture_output=True, text=True,
                               timeout=120, check=True).stdout.strip()
        assert (home / ".ray" / "auth_token").read_text().strip() == token and len(token) >= 32
        start(argv(HEAD, **{"6379": str(gcs)}) + isolate + [
            f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_head}",
            f"--ray-client-server-port={client}"])
        start(argv(WORKER, HEAD_IP="127.0.0.1", **{"6379": str(gcs)}) + isolate + [
            f"--dashboard-agent-listen-port={agent_worker}"])
        yield env, gcs, dash, home
    finally:
        left = stop_groups(pgids)
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"still running after SIGKILL: {left}"


def test_a_run_submitted_through_ray_jobs_to_a_token_auth_cluster(token_cluster):
    env, gcs, dash, home = token_cluster
    tokenizer = f"policy.tokenizer={qwen_tokenizer_dir()}"

    # The dashboard (and its job server) refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)

    # Joining by address without RAY_AUTH_MODE=token: one line naming what to set, exit 2,
    # at once (ray.init would retry for 20 s and end in a bare ConnectionError).
    bare = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run(
        [sys.executable, "launch.py", *RUN.split(), tokenizer, f"ray.address=127.0.0.1:{gcs}",
         f"run.dir={home}/refused"],
        cwd=ROOT, env=bare, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: the Ray cluster at ray.address=127.0.0.1:{gcs} uses token auth "
                      "and refused this process: export RAY_AUTH_MODE=token and its token "
                      "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token; `ray get-auth-token` "
                      "on the head prints it)"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (home / "refused").exists()

    # The run, through the Jobs API: the working dir carries conf/ and the code along.
    run_dir = home / "runs" / "jobs"
    proc = subprocess.run(
        argv(SUBMIT, **{"8265": str(dash)}) + [*RUN.split(), tokenizer, f"run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out and "2 sandbox pool(s)" in out, out[-4000:]  # one per raylet
    groups = groups_jsonl(run_dir)
    assert len(groups) == 4 and len({g["task_id"] for g in groups}) == 4
    assert all(g["scores"] == [1.0, 1.0] for g in groups), [g["scores"] for g in groups]
    assert "4 completed" in (run_dir / "summary.txt").read_text()


def test_readme_runs_what_this_test_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out with Ray"):]
    section = section[:section.index("\n## ", 1)]
    for command in (GENERATE, "export RAY_AUTH_MODE=token", HEAD, WORKER, SUBMIT, RUN):
        assert command in section, command
    assert "ray submit " not in readme  # copies launch.py alone: conf/ stays behind
