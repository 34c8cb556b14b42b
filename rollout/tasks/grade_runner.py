"""The program that runs pytest inside a slot for grading (its source is passed with `-c`).

It is never imported by the project: `grading.pytest_command` sends this file's text to
`python -I -B -c`, so nothing of it has to exist inside the slot. Protocol:

- argv[1] is a JSON spec written into the workspace just before the run: nonce, pytest
  args, the wanted node ids, extra import paths. The runner reads it and deletes it before
  pytest (and so the code under test) is imported.
- The report goes to the slot server's stdout pipe through a private duplicate of fd 1;
  fd 1 itself is then pointed at stderr, so whatever pytest or the code under test prints
  lands on stderr. Every report line starts with the nonce:
  `BOOT`, `START`, `T <STATUS> <nodeid>` per wanted test, `END <exitstatus> <failed>
  <collected>`, `EXIT <rc>`, or `NOPYTEST <why>`.
- Only the wanted tests run (the rest are deselected), so pytest's exit status speaks for
  exactly the graded tests; with `match_params` in the spec a wanted `file::func` also keeps
  its parametrized cases (`file::func[...]`), each reported under its own node id.

A node's status is the worst of all its reports: any failed report (setup, call, teardown
or a subtest's) makes it FAILED or ERROR; an xfail is XFAIL, an unexpected non-strict pass
XPASS, a skip SKIPPED; PASSED needs a passing call report and nothing worse.
"""

import json
import os
import sys

# The same order as `grading._RANK` (this file cannot import it: it runs alone in the slot).
_RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2}


def main() -> int:
    spec_path = sys.argv[1]
    with open(spec_path) as f:
        spec = json.load(f)
    os.unlink(spec_path)
    nonce = spec["nonce"]
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def emit(*parts: str) -> None:
        report.write(" ".join((nonce, *parts)) + "\n")
        report.flush()

    emit("BOOT")
    for path in spec.get("paths", []):
        sys.path.append(os.path.abspath(path))
    try:
        import pytest
    except Exception as e:  # noqa: BLE001 - any failure here means pytest cannot run
        emit("NOPYTEST", f"{type(e).__name__}: {e}".replace("\n", " "))
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
            emit("START")

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
            elif hasattr(report, "wasxfail"):
                self._set(node, "XFAIL" if report.skipped else "XPASS")
            elif report.skipped:
                self._set(node, "SKIPPED")
            elif report.when == "call":
                self._set(node, "PASSED")

        def pytest_collectreport(self, report) -> None:
            if report.failed:
                emit("COLLECTERROR", report.nodeid or ".")

        def pytest_sessionfinish(self, session, exitstatus) -> None:
            for node, status in sorted(self.status.items()):
                emit("T", status, node)
            emit("END", str(int(exitstatus)), str(session.testsfailed),
                 str(session.testscollected))

    rc = int(pytest.main(spec["args"], plugins=[Recorder()]))
    emit("EXIT", str(rc))
    return rc


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it does nothing
    sys.exit(main())
