"""Grading a SWE-smith workspace: the pytest command, its log parser, and the score.

The score is 1.0 only if every FAIL_TO_PASS and every PASS_TO_PASS test is reported PASSED.
A test missing from the log (collection error, deleted file, crash, truncated output) or any
other status (FAILED, ERROR, SKIPPED, XFAIL, XPASS) makes it 0.0. A run that did not really
happen (timeout, a command that cannot start, no pytest session) is a `GradingError`: an
infrastructure outcome, never a score. This closes
the hole in SWE-smith's own grader, which counts a missing test as passed.

Hardening of the pytest run itself (what a reward-hacking agent could otherwise plant):
- `python -I -B`: isolated mode ignores PYTHON* variables and the user site, and does not put
  the workspace first on sys.path, so a planted `sitecustomize.py`, `pytest.py` or
  `_pytest/` is never imported; the workspace is *appended* to sys.path so the package under
  test still imports but cannot shadow installed modules.
- `-c <original ini or /dev/null> --rootdir .`: a planted pytest.ini / tox.ini / setup.cfg /
  pyproject.toml cannot change options (the original config file is restored first).
- `--noconftest` when the original tree has no conftest.py; otherwise only the original
  conftest files survive (see `SweSmithEnv.verify`).
- `-p no:cacheprovider`: no writes into the workspace, no `--lf` state the agent could seed.
- `PYTEST_ADDOPTS` is cleared.
Not defended: code the agent puts in the package under test runs inside the pytest process
and could, with enough effort, tamper with pytest's reporting. Catching that needs an
out-of-process oracle (e.g. a second, hidden test suite).
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable

from rollout.types import ExecResult, GradingError, Verdict

STATUSES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
MISSING = "MISSING"
_STATUS_ALT = "|".join(STATUSES)
# verbose: "tests/test_x.py::test_a[1-2] PASSED    [ 50%]", "... SKIPPED (reason)    [ 60%]"
_VERBOSE = re.compile(
    rf"^(?P<node>\S.*?::.*?) (?P<status>{_STATUS_ALT})(?: \(.*\))?(?:\s+\[\s*\d+%\])?\s*$")
# short summary: "FAILED tests/test_x.py::test_a - AssertionError: ..."
_SUMMARY = re.compile(rf"^(?P<status>{_STATUS_ALT}) (?P<node>\S+?::.*?)(?: - .*)?\s*$")

# Runs pytest.main in isolated mode with the workspace appended (not prepended) to sys.path.
_RUNNER = "import os,sys; sys.path.append(os.getcwd()); import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def node_file(node_id: str) -> str:
    """The file part of a pytest node id (`tests/t.py::C::test_x[a]` -> `tests/t.py`)."""
    return node_id.split("::", 1)[0]


def node_files(node_ids: Iterable[str]) -> list[str]:
    return sorted({node_file(n) for n in node_ids})


def pytest_command(
    files: list[str],
    *,
    python: str = "python",
    ini_file: str | None = None,
    allow_conftest: bool = False,
    plugin_autoload: bool = True,
    log_path: str | None = None,
) -> str:
    """The shell command that runs the given test files with per-test verbose output, to
    stdout or (with `log_path`) to a file; stderr goes to the same place."""
    args = [
        "-c", ini_file or "/dev/null", "--rootdir", ".",
        "-p", "no:cacheprovider",
        "-v", "--tb=no", "-rfE", "--color=no", "--disable-warnings",
    ]
    if not allow_conftest:
        args.append("--noconftest")
    args += ["--", *files]
    env = "PYTEST_ADDOPTS= "
    if not plugin_autoload:
        env += "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "
    return f"{env}{shlex.quote(python)} -I -B -c {shlex.quote(_RUNNER)} " + " ".join(
        shlex.quote(a) for a in args
    ) + (f" > {shlex.quote(log_path)} 2>&1" if log_path else " 2>&1")


def parse_pytest_log(log: str) -> dict[str, str]:
    """Per-test status from pytest output. If a test is reported more than once (a PASSED
    call followed by a teardown ERROR), the first non-PASSED status wins."""
    statuses: dict[str, str] = {}
    for raw in log.splitlines():
        line = raw.rstrip()
        m = _VERBOSE.match(line) or _SUMMARY.match(line)
        if not m:
            continue
        node, status = m.group("node").strip(), m.group("status")
        if statuses.get(node, "PASSED") == "PASSED":
            statuses[node] = status
    return statuses


# Printed by pytest before it collects anything: without it, pytest never really started.
_SESSION_START = re.compile(r"^=+ test session starts =+$", re.MULTILINE)


def check_ran(result: ExecResult) -> None:
    """Raise `GradingError` when the test command did not really run: it timed out, could
    not start (exit 126/127: no interpreter, not executable), or pytest never began a
    session (no pytest installed, an interpreter that died at startup). Such a run says
    nothing about the agent's work and must never become a 0.0."""
    tail = (result.stdout + result.stderr).strip()[-300:]
    if result.timed_out:
        raise GradingError(f"the test run timed out after {result.duration:.0f}s", "timeout")
    if result.exit_code in (126, 127):
        raise GradingError(f"the test command could not start (exit {result.exit_code}): "
                           f"{tail or 'no output'}", "cannot_run")
    if not _SESSION_START.search(result.stdout + "\n" + result.stderr):
        raise GradingError(f"pytest did not start a test session (exit {result.exit_code}): "
                           f"{tail or 'no output'}", "no_report")


def grade(f2p: list[str], p2p: list[str], result: ExecResult) -> Verdict:
    """Score one pytest run: 1.0 iff every listed test is reported PASSED. A run that did
    not really happen raises `GradingError` (see `check_ran`) instead of scoring."""
    check_ran(result)
    statuses = parse_pytest_log(result.stdout + "\n" + result.stderr)
    per_test = {t: statuses.get(t, MISSING) for t in [*f2p, *p2p]}
    f2p_ok = sum(per_test[t] == "PASSED" for t in f2p)
    p2p_ok = sum(per_test[t] == "PASSED" for t in p2p)
    all_ok = f2p_ok == len(f2p) and p2p_ok == len(p2p)
    if all_ok:
        reason = "all tests passed"
    elif any(s == MISSING for s in per_test.values()):
        reason = "tests missing from the pytest output"
    else:
        reason = "tests failed"
    passed = all_ok
    return Verdict(
        score=1.0 if passed else 0.0,
        details={
            "reason": reason,
            "fail_to_pass": {t: per_test[t] for t in f2p},
            "pass_to_pass": {t: per_test[t] for t in p2p},
            "f2p_passed": f2p_ok,
            "f2p_total": len(f2p),
            "p2p_passed": p2p_ok,
            "p2p_total": len(p2p),
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "output_truncated": result.truncated,
            "duration": result.duration,
        },
    )
