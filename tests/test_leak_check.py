"""The session-end check (tests/conftest.py) sees a process the suite started even once it
has detached from pytest and been reparented to init."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import leftover_processes


def test_a_detached_grandchild_is_seen_until_it_exits() -> None:
    # The child starts a grandchild in its own session and exits: the grandchild is orphaned
    # (reparented to init or a subreaper), so only the environment marker still ties it to us.
    script = ("import subprocess; p = subprocess.Popen(['sleep', '60'], start_new_session=True,"
              " stdout=subprocess.DEVNULL,"
              " stderr=subprocess.DEVNULL); print(p.pid)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)
    pid = int(out.stdout)
    try:
        left = leftover_processes()
        assert pid in left and left[pid] == "sleep 60", left
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30  # its new parent reaps it: poll until it has
    while pid in leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid not in leftover_processes()
