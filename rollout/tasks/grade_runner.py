"""The programs that run pytest inside a slot for grading (their source is passed with `-c`).

Never imported by the project: `grading.pytest_run` sends this file's text to `python -I -B
-c` twice over, so nothing of it has to exist inside the slot. Two processes, two roles:

- The **supervisor** (`argv[1]` = the spec file, written into the workspace just before the
  run) reads and deletes its spec, makes itself non-dumpable (so a same-uid process can
  neither read its memory nor open its file descriptors through /proc), keeps a private
  duplicate of the stdout pipe the slot server owns and points fd 1 at stderr. It alone
  knows the nonce and that report channel. It never imports pytest or the code under test.
- The **test process** (`argv[1]` = "child", `argv[2]` = the write end of a pipe) is started
  by the supervisor with a fresh interpreter (exec: nothing of the supervisor's memory
  survives), gets its pytest args, node ids and import paths on stdin, runs pytest and
  writes JSON lines to the pipe. It knows neither the nonce nor which node ids are graded
  (the host mixes hidden canary tests in, shaped like the task's own), nor the report pipe
  of the slot server. What the code under test can forge here is only this process's own
  account, which the host checks against the canaries. Only the wanted tests run (the rest
  are deselected); with `match_params` in the spec a wanted `file::func` also keeps its
  parametrized cases (`file::func[...]`), each reported under its own node id.

The supervisor relays the test process's account as nonce-prefixed lines: `BOOT`, `START`,
`T <STATUS> <nodeid>`, `ERR <json [nodeid, text]>` (why a test errored at setup or failed to
collect), `COLLECTERROR <nodeid>`, `END <exitstatus> <failed> <collected>`, `EXIT <rc>` (the
test process's exit code) or `NOPYTEST <why>`.

A node's status is the worst of all its reports: any failed report (setup, call, teardown
or a subtest's) makes it FAILED or ERROR; an xfail is XFAIL, an unexpected non-strict pass
XPASS, a skip SKIPPED; PASSED needs a passing call report and nothing worse.
"""

import json
import os
import subprocess
import sys
import threading

# The same order as `grading._RANK` (this file cannot import it: it runs alone in the slot).
_RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2}


def _undumpable() -> None:
    # PR_SET_DUMPABLE = 4: /proc/<pid>/{mem,fd,environ} and ptrace refused to same-uid peers.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the canaries do not depend on it
        pass


def supervise(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    os.unlink(spec_path)
    _undumpable()
    nonce = spec.pop("nonce")
    child_source = spec.pop("child")
    report = os.fdopen(os.dup(1), "w")  # non-inheritable: the test process never gets it
    os.dup2(2, 1)

    def emit(*parts: str) -> None:
        report.write(" ".join((nonce, *parts)) + "\n")
        report.flush()

    emit("BOOT")
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", child_source, "child", str(write_end)],
            stdin=subprocess.PIPE, stdout=2, stderr=2, pass_fds=(write_end,), close_fds=True)
    except OSError as e:
        emit("NOPYTEST", f"cannot start the test process: {e}".replace("\n", " "))
        return 3
    os.close(write_end)
    try:
        child.stdin.write(json.dumps(spec).encode())
        child.stdin.close()
    except OSError:
        pass  # it died at once; its exit code says so
    # Read in a thread and stop once the test process is gone: a process it left behind
    # holding the pipe open must not keep grading waiting.
    lines: list[bytes] = []
    account = os.fdopen(read_end, "rb")
    reader = threading.Thread(target=lambda: lines.extend(account), daemon=True)
    reader.start()
    rc = child.wait()
    reader.join(timeout=5.0)
    status: dict[str, str] = {}
    end = None
    for raw in list(lines):
        try:
            item = json.loads(raw)
            kind = item["k"]
        except (ValueError, KeyError, TypeError):
            continue
        if kind == "start":
            emit("START")
        elif kind == "nopytest":
            emit("NOPYTEST", str(item.get("why", "")).replace("\n", " ")[:500])
        elif kind == "t" and item.get("s") in _RANK and isinstance(item.get("n"), str):
            node, new = item["n"].replace("\n", " "), item["s"]
            if _RANK[new] >= _RANK.get(status.get(node, ""), -1):
                status[node] = new
        elif kind == "err" and isinstance(item.get("n"), str):
            emit("ERR", json.dumps([item["n"], str(item.get("why", ""))[-600:]]))
        elif kind == "collecterror":
            emit("COLLECTERROR", str(item.get("n") or ".").replace("\n", " "))
        elif kind == "end":
            try:
                end = [str(int(x)) for x in item["v"]][:3]
            except (KeyError, TypeError, ValueError):
                pass
    for node, s in sorted(status.items()):
        emit("T", s, node)
    if end is not None and len(end) == 3:
        emit("END", *end)
    emit("EXIT", str(rc))
    return 0 if rc == 0 else 1


def run_tests(fd: str) -> int:
    out = os.fdopen(int(fd), "w")
    spec = json.load(sys.stdin)

    def emit(**item) -> None:
        out.write(json.dumps(item) + "\n")
        out.flush()

    for path in spec.get("paths", []):
        sys.path.append(os.path.abspath(path))
    try:
        import pytest
    except Exception as e:  # noqa: BLE001 - any failure here means pytest cannot run
        emit(k="nopytest", why=f"{type(e).__name__}: {e}")
        return 3
    wanted = set(spec["tests"])
    params = bool(spec.get("match_params"))

    class Recorder:
        def __init__(self) -> None:
            self.status: dict[str, str] = {}

        def _set(self, node: str, status: str) -> None:
            if _RANK[status] >= _RANK.get(self.status.get(node, ""), -1):
                self.status[node] = status

        def pytest_sessionstart(self, session) -> None:
            emit(k="start")

        @pytest.hookimpl(trylast=True)
        def pytest_collection_modifyitems(self, session, config, items) -> None:
            def keep(nodeid: str) -> bool:  # `func[case]` of a wanted `func` when asked
                return nodeid in wanted or (params and nodeid.split("[", 1)[0] in wanted)

            drop = [i for i in items if not keep(i.nodeid)]
            if drop:
                items[:] = [i for i in items if keep(i.nodeid)]
                config.hook.pytest_deselected(items=drop)

        def pytest_runtest_logreport(self, report) -> None:
            node = report.nodeid
            if report.failed:
                self._set(node, "FAILED" if report.when == "call" else "ERROR")
                if report.when == "setup":
                    emit(k="err", n=node, why=getattr(report, "longreprtext", "")[-600:])
            elif hasattr(report, "wasxfail"):
                self._set(node, "XFAIL" if report.skipped else "XPASS")
            elif report.skipped:
                self._set(node, "SKIPPED")
            elif report.when == "call":
                self._set(node, "PASSED")

        def pytest_collectreport(self, report) -> None:
            if report.failed:
                emit(k="collecterror", n=report.nodeid or ".")
                emit(k="err", n=report.nodeid or ".",
                     why=getattr(report, "longreprtext", "")[-600:])

        def pytest_sessionfinish(self, session, exitstatus) -> None:
            for node, status in sorted(self.status.items()):
                emit(k="t", s=status, n=node)
            emit(k="end", v=[int(exitstatus), session.testsfailed, session.testscollected])

    return int(pytest.main(spec["args"], plugins=[Recorder()]))


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it does nothing
    if sys.argv[1:2] == ["child"]:
        sys.exit(run_tests(sys.argv[2]))
    sys.exit(supervise(sys.argv[1]))
