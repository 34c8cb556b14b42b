"""The whole suite's one session-end check: no process the suite started outlives it.

Every process the suite starts inherits a marker in its environment (set here, before any
test runs), including ones that detach and are reparented to init (fake-Modal sandboxes,
slot servers whose parent died). At the end of the session, after every fixture's teardown,
the check polls /proc for processes carrying this session's marker or descending from this
pytest process; whatever is still there after a grace period (Ray and slot servers take a
moment to exit after their owners stop them) fails the run, is listed, and is killed so it
does not outlive the report either. A process started with an emptied environment escapes
the marker but not the descendant scan while its parent lives.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

MARKER = "ROLLOUT_TEST_SESSION"
GRACE_S = 15.0  # Ray's own processes can take several seconds to exit after ray.shutdown()

# One compute thread per process (torch, and BLAS where numpy uses one), inherited like the
# marker below: the suite runs three workers on two cores, and the embedded model's OpenMP
# threads (torch's default is one per core) spin while they wait for a core, which costs the
# rest of the suite CPU. Measured on tests/policy_embedded/test_logprobs.py alone on a quiet
# machine: 38.1 CPU-s with torch's default, 27.3 with one thread, the same wall time. A run
# that sets these itself keeps its own.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# At import (before collection and any fixture): every process started from now inherits it.
# A nested pytest (a test running pytest) keeps the outer session's marker. Under pytest-xdist
# each worker extends the controller's marker with its own id, so a test that looks for "its"
# processes (tests/test_launch.py) sees its worker's alone, while the controller's check at
# the end still sees every worker's.
os.environ.setdefault(MARKER, f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
if (_worker := os.environ.get("PYTEST_XDIST_WORKER")) and "/" not in os.environ[MARKER]:
    os.environ[MARKER] = f"{os.environ[MARKER]}/{_worker}"


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _marked(pid: int, marker: bytes) -> bool:
    """The process carries this session's marker, or a marker of one of its xdist workers."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return any(e == marker or e.startswith(marker + b"/") for e in env)


def leftover_processes(me: int = 0) -> dict[int, str]:
    """Live (non-zombie) processes of this session other than this one: pid -> command."""
    me = me or os.getpid()
    marker = f"{MARKER}={os.environ[MARKER]}".encode()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) and st[1] != "Z":
            parents[int(entry)] = st[0]

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    out = {}
    for pid in parents:
        if pid != me and (descends(pid) or _marked(pid, marker)):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()
            except OSError:
                continue
            out[pid] = cmd[:200]
    return out


# Folders whose tests share package- or session-scoped fixtures that are dear to make (the
# observe tests' gold run, the embedded policy's converted model and server): their files go
# to one worker together, so each fixture is made once, not once per worker.
SHARED_FIXTURE_DIRS = ("tests/observe/", "tests/policy_embedded/")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile`, except that the files of each of SHARED_FIXTURE_DIRS are one unit of
    work. (Handing out the longest files first was tried: on 2 cores it made the slowest
    tests contend with each other, 1,046 s of pytest against 955 s.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((d for d in SHARED_FIXTURE_DIRS if path.startswith(d)), path)

    return Scheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get(MARKER, "").startswith(f"{os.getpid()}-"):
        return  # a nested pytest: the outer session checks
    deadline = time.monotonic() + GRACE_S
    left = leftover_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftover_processes()
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) the suite started were still running {GRACE_S:.0f} s "
             "after the session ended (now killed):"]
    lines += [f"  pid {pid}: {cmd}" for pid, cmd in sorted(left.items())]
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("=", "processes left behind", red=True)
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
