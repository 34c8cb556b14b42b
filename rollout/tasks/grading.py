"""Grading a SWE-smith workspace: the pytest run, its out-of-band report, and the score.

The score is 1.0 only if every FAIL_TO_PASS and every PASS_TO_PASS test is reported PASSED
*and* the report is whole and consistent: pytest's session finished, its exit status, the
runner's exit code and the process exit code are all 0, and no test failed. A test missing
from the report (collection error, deleted file, crash) or any other status (FAILED, ERROR,
SKIPPED, XFAIL, XPASS, a failed subtest) makes it 0.0. A run that did not really happen
(timeout, a command that cannot start, no pytest, killed by a signal, a truncated report) is a
`GradingError`: an infrastructure outcome, never a score. This closes the hole in
SWE-smith's own grader, which counts a missing test as passed.

The report does not come from pytest's terminal output: `grade_runner` (run with `-c`, so
nothing of it lives in the slot) records each wanted test's outcome from pytest's report
hooks and writes nonce-prefixed lines to a private duplicate of the stdout pipe, which the
slot server owns; the terminal output and anything the code under test prints go to stderr.
A file in the workspace is never read for grading, and lines without this run's nonce are
ignored.

Hardening of the pytest run itself (what a reward-hacking agent could otherwise plant):
- `python -I -B`: isolated mode ignores PYTHON* variables and the user site, and does not put
  the workspace first on sys.path, so a planted `sitecustomize.py`, `pytest.py` or
  `_pytest/` is never imported; the workspace (and a profile's extra paths, e.g. `src`) is
  *appended* to sys.path so the package under test still imports but cannot shadow installed
  modules.
- `-c <original ini or /dev/null> --rootdir .`: a planted pytest.ini / tox.ini / setup.cfg /
  pyproject.toml cannot change options (the original config file is restored first).
- `--noconftest` when the original tree has no conftest.py; otherwise only the original
  conftest files survive (see `SweSmithEnv.verify`).
- `-p no:cacheprovider`: no writes into the workspace, no `--lf` state the agent could seed.
- `PYTEST_ADDOPTS` is cleared.
Not defendable in-process: the package under test is imported into the pytest process, so
code there can patch pytest's reports (all hooks then agree, and so does the exit status),
find the report fd and nonce in the runner's memory or /proc, or detect the test run. That
is why `suspicious_changes` flags diffs that reach for pytest internals, `sys.modules`,
`os._exit`, /proc or the grading files: such a trajectory scores 0.0 and is counted as
suspected reward hacking. Closing it fully needs an out-of-process oracle (hidden extra
tests, or running the tests against a pristine copy in a second slot).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rollout.types import ExecResult, GradingError, Verdict

MISSING = "MISSING"
_RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2}
SPEC_FILE = ".rollout-grade.json"  # written just before the run; the runner deletes it
_RUNNER_SOURCE = (Path(__file__).with_name("grade_runner.py")).read_text()


def node_file(node_id: str) -> str:
    """The file part of a pytest node id (`tests/t.py::C::test_x[a]` -> `tests/t.py`)."""
    return node_id.split("::", 1)[0]


def node_files(node_ids: Iterable[str]) -> list[str]:
    return sorted({node_file(n) for n in node_ids})


@dataclass(frozen=True)
class GradeRun:
    """One grading run: write `spec` to `spec_path` in the workspace, then exec `command`;
    score its result with `grade(..., nonce=nonce)`."""

    command: str
    spec_path: str
    spec: bytes
    nonce: str = field(repr=False)


def pytest_run(
    files: list[str],
    tests: list[str],
    *,
    python: str = "python",
    ini_file: str | None = None,
    allow_conftest: bool = False,
    plugin_autoload: bool = True,
    paths: Iterable[str] = (".",),
    env: dict[str, str] | None = None,
) -> GradeRun:
    """The grading run of `tests` (node ids) from `files`. `paths` are appended to sys.path
    (relative to the workspace); `env` are extra variables for the test process."""
    nonce = secrets.token_hex(16)
    args = [
        "-c", ini_file or "/dev/null", "--rootdir", ".",
        "-p", "no:cacheprovider",
        "-v", "--tb=short", "-rfE", "--color=no", "--disable-warnings",
    ]
    if not allow_conftest:
        args.append("--noconftest")
    args += ["--", *files]
    spec = {"nonce": nonce, "args": args, "tests": sorted(set(tests)), "paths": list(paths)}
    variables = {"PYTEST_ADDOPTS": "", **(env or {})}
    if not plugin_autoload:
        variables["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    command = (f"{prefix} {shlex.quote(python)} -I -B -c {shlex.quote(_RUNNER_SOURCE)} "
               f"{shlex.quote(SPEC_FILE)}")
    return GradeRun(command, SPEC_FILE, json.dumps(spec).encode(), nonce)


@dataclass
class Report:
    """What the runner reported, from the lines carrying this run's nonce only."""

    booted: bool = False
    started: bool = False
    no_pytest: str | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    end: tuple[int, int, int] | None = None  # (exit status, tests failed, tests collected)
    runner_rc: int | None = None
    collect_errors: list[str] = field(default_factory=list)



def parse_report(text: str, nonce: str) -> Report:
    rep = Report()
    mark = nonce + " "
    for line in text.splitlines():
        if not line.startswith(mark):
            continue
        kind, _, rest = line[len(mark):].partition(" ")
        if kind == "BOOT":
            rep.booted = True
        elif kind == "START":
            rep.started = True
        elif kind == "NOPYTEST":
            rep.no_pytest = rest or "pytest cannot be imported"
        elif kind == "T":
            status, _, node = rest.partition(" ")
            if status in _RANK and node:
                # A node reported twice (a forgery attempt, say) keeps its worst status.
                if _RANK[status] >= _RANK.get(rep.statuses.get(node, ""), -1):
                    rep.statuses[node] = status
        elif kind == "END":
            try:
                a, b, c = (int(x) for x in rest.split())
                rep.end = (a, b, c)
            except ValueError:
                pass
        elif kind == "EXIT":
            try:
                rep.runner_rc = int(rest)
            except ValueError:
                pass
        elif kind == "COLLECTERROR":
            rep.collect_errors.append(rest)
    return rep


def check_ran(result: ExecResult, rep: Report) -> None:
    """Raise `GradingError` when the test run did not really happen: it timed out, could not
    start (exit 126/127, no interpreter), pytest is missing or never began a session, the
    process was killed by a signal (memory limit, say) before pytest finished, or the report
    pipe was truncated. Such a run says nothing about the agent's work: never a 0.0."""
    tail = (result.stderr or result.stdout).strip()[-300:]
    if result.timed_out:
        raise GradingError(f"the test run timed out after {result.duration:.0f}s", "timeout")
    if result.exit_code in (126, 127) or not rep.booted:
        raise GradingError(f"the test command could not start (exit {result.exit_code}): "
                           f"{tail or 'no output'}", "cannot_run")
    if rep.no_pytest:
        raise GradingError(f"pytest cannot be imported by the grading interpreter: "
                           f"{rep.no_pytest}", "cannot_run")
    if not rep.started:
        raise GradingError(f"pytest did not start a test session (exit {result.exit_code}): "
                           f"{tail or 'no output'}", "no_report")
    if rep.end is None and (result.exit_code < 0 or result.exit_code >= 128):
        raise GradingError(f"the test process was killed (exit {result.exit_code}) before "
                           f"pytest finished: {tail or 'no output'}", "killed")
    if result.truncated and rep.end is None:
        raise GradingError("the grading report was truncated (raise sandbox.output_cap)",
                           "report_truncated")


def grade(f2p: list[str], p2p: list[str], result: ExecResult, nonce: str) -> Verdict:
    """Score one grading run: 1.0 iff every listed test is reported PASSED and the report is
    whole and consistent (see the module docstring). A run that did not really happen raises
    `GradingError` (see `check_ran`) instead of scoring."""
    rep = parse_report(result.stdout, nonce)
    check_ran(result, rep)
    per_test = {t: rep.statuses.get(t, MISSING) for t in [*f2p, *p2p]}
    f2p_ok = sum(per_test[t] == "PASSED" for t in f2p)
    p2p_ok = sum(per_test[t] == "PASSED" for t in p2p)
    all_ok = f2p_ok == len(f2p) and p2p_ok == len(p2p)
    inconsistent = _inconsistencies(rep, result, len(per_test)) if all_ok else []
    if rep.end is None:
        reason = "the test process ended before pytest finished (os._exit or a crash)"
    elif inconsistent:
        reason = "inconsistent report: " + "; ".join(inconsistent)
    elif all_ok:
        reason = "all tests passed"
    elif any(s == MISSING for s in per_test.values()):
        reason = "tests missing from the pytest report"
    else:
        reason = "tests failed"
    passed = all_ok and not inconsistent and rep.end is not None
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
            "pytest_exit_status": rep.end[0] if rep.end else None,
            "report_inconsistent": inconsistent,
            "collect_errors": rep.collect_errors[:20],
            "timed_out": result.timed_out,
            "duration": result.duration,
            "log_tail": result.stderr[-2000:],
        },
    )


def _inconsistencies(rep: Report, result: ExecResult, wanted: int) -> list[str]:
    """Why an all-PASSED report cannot be trusted: every other witness must agree."""
    out = []
    if rep.end is None:
        return out
    status, failed, collected = rep.end
    if status != 0:
        out.append(f"pytest's exit status is {status}")
    if failed:
        out.append(f"pytest counted {failed} failed test(s)")
    if collected < wanted:
        out.append(f"pytest collected {collected} test(s) for {wanted} graded")
    if rep.runner_rc != 0:
        out.append(f"the runner exited {rep.runner_rc}")
    if result.exit_code != 0:
        out.append(f"the process exited {result.exit_code}")
    if any(s != "PASSED" for s in rep.statuses.values()):
        out.append("a reported test did not pass")
    return out


# --- what a diff should not touch ------------------------------------------------------------

# Added lines matching these are how code under test tampers with an in-process grader.
_SUSPICIOUS = [
    (re.compile(r"\b_pytest\b|\bpluggy\b|pluginmanager"), "pytest internals"),
    (re.compile(r"\bTestReport\b|\bCallInfo\b|pytest_runtest_|pytest_sessionfinish|pytest_terminal"),
     "pytest report hooks"),
    (re.compile(r"^\s*(?:import pytest\b|from pytest\b)"), "pytest imported by library code"),
    (re.compile(r"\bsys\.modules\b"), "sys.modules"),
    (re.compile(r"\bos\._exit\b"), "os._exit"),
    (re.compile(r"/proc/self|/dev/fd/|\bos\.(?:dup2?|fdopen)\b"), "process file descriptors"),
    (re.compile(r"\bgc\.get_(?:objects|referrers)\b"), "the garbage collector's object lists"),
    (re.compile(r"rollout-grade|PYTEST_"), "the grading run's own files or settings"),
]


def suspicious_changes(diff: str, test_files: Iterable[str] = ()) -> list[str]:
    """Reasons a unified diff looks like reward hacking: added lines, outside the test files
    (which are restored before grading anyway), that reach for the grader's machinery."""
    skip = set(test_files)
    found: dict[str, None] = {}
    current = ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            current = line[4:].removeprefix("b/")
            continue
        if not line.startswith("+") or current in skip:
            continue
        for pattern, why in _SUSPICIOUS:
            if pattern.search(line[1:]):
                found[f"{why} ({current})"] = None
    return list(found)
