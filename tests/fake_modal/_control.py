"""The fake's control plane: plain files in one directory, shared by every process of a test.

Modal's control plane outlives the client; so does this one. `$FAKE_MODAL_DIR` names the
directory (a test sets it; Ray workers inherit it). Layout:

    apps/<name>                   the app id of an app
    sandboxes/<id>.json           what create() was asked (spec: entrypoint, env, timeout...)
    sandboxes/<id>.tags.json      its tags (set_tags replaces the file)
    sandboxes/<id>.run.json       written by its supervisor once running: pids, tunnel ports
    sandboxes/<id>.exit.json      written by its supervisor when it ended: returncode, reason
    sandboxes/<id>.activity       touched on every exec / filesystem call (idle_timeout)
    sandboxes/<id>.terminated     terminate() was called (the control plane's view, at once)
    creations.jsonl               one line per create() accepted: id and time (the rate test)
    images/<recipe hash>          an image built (create() builds a recipe not yet there)
    faults.json                   fault injection (see `Faults`)

Each sandbox is a supervisor process (`_supervisor.py`), started detached: like a Modal
sandbox it keeps running when the client process dies, until it is terminated, its
entrypoint exits, or its `timeout` / `idle_timeout` passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "FAKE_MODAL_DIR"


def root() -> Path:
    value = os.environ.get(ENV)
    if not value:
        raise RuntimeError(f"the fake modal needs ${ENV} set to its state directory")
    path = Path(value)
    (path / "apps").mkdir(parents=True, exist_ok=True)
    (path / "sandboxes").mkdir(exist_ok=True)
    return path


def sandbox_path(sandbox_id: str, suffix: str) -> Path:
    return root() / "sandboxes" / f"{sandbox_id}{suffix}"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked() -> Any:
    """The control plane's one lock (creation accounting and fault counters)."""
    with open(root() / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


@dataclass
class Faults:
    """What Modal's control plane does that takes time or says no, read at every create():
    `throttle_next` creates refused with ResourceExhaustedError; `rate_limit` creates per
    second accepted account-wide (more are refused, as Modal's own limit does);
    `image_build` seconds spent inside the first create() of each image recipe (Modal builds
    an image on first use, then caches it); `schedule_delay` seconds a created sandbox waits
    for a worker; `start_delay` seconds of cold start before its entrypoint runs."""

    throttle_next: int = 0
    rate_limit: float = 0.0
    image_build: float = 0.0
    schedule_delay: float = 0.0
    start_delay: float = 0.0

    @classmethod
    def load(cls) -> Faults:
        return cls(**(read_json(root() / "faults.json") or {}))

    def save(self) -> None:
        write_json(root() / "faults.json", self.__dict__)


def set_faults(**changes: Any) -> None:
    """For tests: change the fault injection of the fake (in any process)."""
    with locked():
        faults = Faults.load()
        for k, v in changes.items():
            if not hasattr(faults, k):
                raise TypeError(f"unknown fault {k!r}")
            setattr(faults, k, v)
        faults.save()


def creations() -> list[dict[str, Any]]:
    path = root() / "creations.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def exit_record(sandbox_id: str) -> dict[str, Any] | None:
    return read_json(sandbox_path(sandbox_id, ".exit.json"))


def run_record(sandbox_id: str) -> dict[str, Any] | None:
    return read_json(sandbox_path(sandbox_id, ".run.json"))


def supervisor_alive(sandbox_id: str) -> bool:
    spec = read_json(sandbox_path(sandbox_id, ".json"))
    if spec is None or "supervisor" not in spec:
        return False
    sup = spec["supervisor"]
    return start_time(sup["pid"]) == sup["start_time"]


def running(sandbox_id: str) -> bool:
    """Running: not terminated (as the control plane sees it at once), not ended, and its
    supervisor (the sandbox itself) still exists."""
    return (not sandbox_path(sandbox_id, ".terminated").exists()
            and exit_record(sandbox_id) is None and supervisor_alive(sandbox_id))


def all_ids() -> list[str]:
    return sorted(p.name[:-len(".json")] for p in (root() / "sandboxes").glob("sb-*.json")
                  if p.name.count(".") == 1)


def running_ids(**tags: str) -> set[str]:
    """For tests: ids of the running sandboxes whose tags include `tags`."""
    out = set()
    for sid in all_ids():
        have = read_json(sandbox_path(sid, ".tags.json")) or {}
        if running(sid) and all(have.get(k) == v for k, v in tags.items()):
            out.add(sid)
    return out


def terminate(sandbox_id: str) -> bool:
    """What Sandbox.terminate() asks of the control plane: the sandbox is terminated from
    now on (no longer listed), and its worker is told to stop it."""
    if read_json(sandbox_path(sandbox_id, ".json")) is not None:
        sandbox_path(sandbox_id, ".terminated").touch()
    return signal_supervisor(sandbox_id)


def signal_supervisor(sandbox_id: str, sig: int = signal.SIGTERM) -> bool:
    spec = read_json(sandbox_path(sandbox_id, ".json")) or {}
    sup = spec.get("supervisor")
    if sup is None or start_time(sup["pid"]) != sup["start_time"]:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(sup["pid"], sig)
    return True


def kill_everything() -> None:
    """For test teardown only: end every sandbox of this state dir (after the assertions)."""
    for sid in all_ids():
        signal_supervisor(sid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(supervisor_alive(s) for s in all_ids()):
        time.sleep(0.05)
    for sid in all_ids():
        signal_supervisor(sid, signal.SIGKILL)
