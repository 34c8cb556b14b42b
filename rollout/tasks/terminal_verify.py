"""Grading a terminal task with its own verifier, in the slot the agent used.

Three verifiers (`Task.data["verifier"]`, chosen at load by `terminal_formats`):

- `pytest`: the task's pytest files run with the hardened runner of `rollout.tasks.grading`
  (out-of-band report, nothing read from the workspace). Every test function must be
  reported PASSED; a parametrized one through every case it expands to (`func[...]`), and at
  least one case. The tests enter the slot only now, in a fresh randomly named directory.
- `reward` (Harbor): `tests/` is moved to `/tests`, `/logs/verifier` is made empty, and
  `/tests/test.sh` runs (its output to `/logs/verifier/test-stdout.txt`). Its reward file is the
  score: `reward.json` (its `reward` key) first, else `reward.txt` (one number, fractions
  allowed), as Harbor reads them.
- `tb1` (Terminal-Bench 1): `run-tests.sh` runs with `TEST_DIR=/tests`; its pytest output is
  the report (`-rA` summary or verbose lines). 1.0 iff it reports every test function of the
  task's pytest files, and every reported test PASSED.

What is not a score (`GradingError`, retried then dropped, never a 0.0): a timeout, a script
that cannot start (exit 126/127) or cannot be put in place (a read-only root: script
verifiers need an image slot), no reward file, a reward file that holds no number, a
`run-tests.sh` whose output holds no test result, a reward below 1 from a test.sh that
reported one of its own commands as not found (the usual offline failure of a script that
installs uv or pytest first; a command the agent's own script lacks prints that script's
name instead, and stays a score).

The verifier runs as Harbor runs it, inside the agent's container, but as a grading exec
(`Sandbox.exec(..., grading=True)`): in an image slot with a writable root the slot server
gives it the image's own toolchain, a process tree the agent's processes cannot see, and
fresh private `/tests` and `/logs/verifier` (sandbox_image/grading_view.py), so processes the
agent left running cannot rewrite the reward file or the tests once they are in place.
"""

from __future__ import annotations

import base64
import io
import json
import math
import posixpath
import re
import secrets
import shlex
import tarfile
from typing import Any

from rollout.protocols import Sandbox
from rollout.tasks.grading import check_ran, parse_report, pytest_run
from rollout.types import ExecResult, GradingError, Task, Verdict

MISSING = "MISSING"
_WORST = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2, MISSING: 3}
TESTS_DIR = "/tests"
VERIFIER_DIR = "/logs/verifier"
REWARD_FILES = ("reward.json", "reward.txt")
_LOG_CAP = 256 << 10  # bytes of run-tests.sh output read back (the -rA summary is at the end)



def tests_archive(data: dict[str, Any], where: str) -> bytes:
    """The task's tests/ files (text and binary) as a tar under `where/`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = {**{k: v.encode() for k, v in data["tests_dir"].items()},
                   **{k: base64.b64decode(v) for k, v in data["tests_binary"].items()}}
        for name, blob in sorted(entries.items()):
            info = tarfile.TarInfo(f"{where}/{name}")
            info.size = len(blob)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: _WORST.get(s, 2)) if statuses else MISSING


async def verify_pytest(task: Task, sandbox: Sandbox, *, python: str, plugin_autoload: bool,
                        timeout: float) -> Verdict:
    data = task.data
    where = f".rollout-grade-{secrets.token_hex(8)}"
    # The hidden tests enter the slot only now: the agent never had them to read.
    await sandbox.upload_archive(tests_archive(data, where))
    node_ids = [f"{where}/{t}" for t in data["tests"]]
    run = pytest_run([f"{where}/{f}" for f in data["pytest_files"]], node_ids, python=python,
                     plugin_autoload=plugin_autoload, env=data.get("verifier_env") or None,
                     allow_conftest="conftest.py" in data["tests_dir"], match_params=True)
    await sandbox.write_file(run.spec_path, run.spec)
    try:
        result = await sandbox.exec(run.command, timeout=timeout, grading=True)
    finally:
        await sandbox.exec(f"rm -rf -- {shlex.quote(where)}", timeout=30.0)
    return grade_functions(node_ids, result, run.nonce, prefix=f"{where}/")


def grade_functions(wanted: list[str], result: ExecResult, nonce: str,
                    prefix: str = "") -> Verdict:
    """1.0 iff every wanted test function is reported PASSED in each of its cases (at least
    one), and the report is whole and consistent (pytest finished, exit statuses 0, nothing
    failed). A run that did not really happen raises `GradingError` (`grading.check_ran`)."""
    rep = parse_report(result.stdout, nonce)
    check_ran(result, rep)
    per_function: dict[str, str] = {}
    for want in wanted:
        cases = [s for node, s in rep.statuses.items() if node == want or node.startswith(want + "[")]
        per_function[want] = _worst(cases)
    passed = sum(s == "PASSED" for s in per_function.values())
    inconsistent: list[str] = []
    if rep.end is not None and passed == len(wanted):
        status, failed, collected = rep.end
        checks = [(status != 0, f"pytest's exit status is {status}"),
                  (failed, f"pytest counted {failed} failed test(s)"),
                  (collected < len(wanted),
                   f"pytest collected {collected} test(s) for {len(wanted)} graded"),
                  (rep.runner_rc != 0, f"the runner exited {rep.runner_rc}"),
                  (result.exit_code != 0, f"the process exited {result.exit_code}"),
                  (any(s != "PASSED" for s in rep.statuses.values()),
                   "a reported test did not pass")]
        inconsistent = [why for bad, why in checks if bad]
    if rep.end is None:
        reason = "the test process ended before pytest finished (os._exit or a crash)"
    elif inconsistent:
        reason = "inconsistent report: " + "; ".join(inconsistent)
    elif passed == len(wanted):
        reason = "all tests passed"
    elif MISSING in per_function.values():
        reason = "tests missing from the pytest report"
    else:
        reason = "tests failed"
    ok = passed == len(wanted) and not inconsistent and rep.end is not None
    return Verdict(score=1.0 if ok else 0.0, details={
        "reason": reason, "verifier": "pytest",
        "tests": {n.removeprefix(prefix): s for n, s in sorted(rep.statuses.items())},
        "f2p_passed": passed, "f2p_total": len(wanted),
        "exit_code": result.exit_code,
        "pytest_exit_status": rep.end[0] if rep.end else None,
        "report_inconsistent": inconsistent, "collect_errors": rep.collect_errors[:20],
        "duration": result.duration, "log_tail": result.stderr[-2000:],
    })


def script_command(where: str, script: str, nonce: str, env: dict[str, str],
                   read_log: bool) -> str:
    """One shell command: put the tests at /tests, run the verifier script from the slot's
    working directory, then print its exit code and its reward files (or, `read_log`, the
    tail of its output) between lines carrying `nonce`. The script's own output goes to
    /logs/verifier/test-stdout.txt, never to this command's stdout."""
    q = shlex.quote
    log = f"{VERIFIER_DIR}/test-stdout.txt"
    assigns = " ".join(f"{k}={q(v)}" for k, v in {"TEST_DIR": TESTS_DIR, **env}.items())
    lines = [
        f"W={q(where)}",
        # In a grading view both are fresh private mounts (the rm leaves the mount points).
        (f"err=$( {{ rm -rf {TESTS_DIR} {VERIFIER_DIR} 2>/dev/null; mkdir -p {TESTS_DIR} "
         f"{VERIFIER_DIR} && cp -R \"$W\"/. {TESTS_DIR}/ && rm -rf \"$W\"; }} 2>&1 ) || "
         f"{{ rm -rf \"$W\"; "
         f"printf '%s SETUP %s\\n' {nonce} \"$(printf %s \"$err\" | tr '\\n' ' ' | head -c 300)\"; "
         "exit 0; }"),
        f"chmod +x {TESTS_DIR}/{q(script)} 2>/dev/null",
        f"{assigns} {TESTS_DIR}/{q(script)} > {log} 2>&1 < /dev/null",
        f"echo \"{nonce} RC $?\"",
    ]
    if read_log:
        lines.append(f"echo '{nonce} BEGIN log'; tail -c {_LOG_CAP} {log}; echo; "
                     f"echo '{nonce} END log'")
    # The script's own "command not found" lines (dash: `<script>: 5: uvx: not found`, bash:
    # `<script>: line 5: uvx: command not found`): its tools are missing from the image.
    lines.append(f"echo '{nonce} BEGIN missing'; grep -m 3 -E "
                 f"'^{TESTS_DIR}/{script}: (line )?[0-9]+: [^ :]+: (command )?not found$' {log}; "
                 f"echo; echo '{nonce} END missing'")
    for name in REWARD_FILES:
        path = f"{VERIFIER_DIR}/{name}"
        lines.append(f"if [ -f {path} ]; then echo '{nonce} BEGIN {name}'; head -c 65536 {path}; "
                     f"echo; echo '{nonce} END {name}'; fi")
    lines.append(f"tail -c 2000 {log} >&2")
    return "\n".join(lines)


def _sections(stdout: str, nonce: str) -> tuple[dict[str, str], int | None, str | None]:
    """The nonce-delimited parts of a script run's stdout: named blocks, the script's exit
    code, and the setup failure (if the tests could not be put in place)."""
    blocks: dict[str, str] = {}
    rc: int | None = None
    setup: str | None = None
    current: str | None = None
    body: list[str] = []
    mark = nonce + " "
    for line in stdout.splitlines():
        if line.startswith(mark):
            kind, _, rest = line[len(mark):].partition(" ")
            if kind == "BEGIN" and current is None:
                current, body = rest, []
            elif kind == "END" and current == rest:
                blocks[current] = "\n".join(body)
                current = None
            elif kind == "RC" and current is None:
                try:
                    rc = int(rest)
                except ValueError:
                    pass
            elif kind == "SETUP" and current is None:
                setup = rest
            continue
        if current is not None:
            body.append(line)
    return blocks, rc, setup


def parse_reward(blocks: dict[str, str]) -> tuple[float, str]:
    """The score from the reward files as Harbor reads them: reward.json's `reward` key
    first, then reward.txt; a reward.json holding a single number counts as that number."""
    values: dict[str, float] = {}
    if "reward.json" in blocks:
        try:
            doc = json.loads(blocks["reward.json"])
        except ValueError:
            raise GradingError("reward.json is not JSON", "bad_reward") from None
        if not isinstance(doc, dict):
            raise GradingError("reward.json is not an object", "bad_reward")
        values = {k: float(v) for k, v in doc.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "reward" in values:
            return _finite(values["reward"], "reward.json"), "reward.json"
    if "reward.txt" in blocks:
        text = blocks["reward.txt"].strip()
        if not text:
            raise GradingError("reward.txt is empty", "bad_reward")
        try:
            return _finite(float(text), "reward.txt"), "reward.txt"
        except ValueError:
            raise GradingError(f"reward.txt holds no number: {text[:80]!r}", "bad_reward") from None
    if len(values) == 1:
        return _finite(next(iter(values.values())), "reward.json"), "reward.json"
    if "reward.json" in blocks:
        raise GradingError("reward.json has no numeric 'reward' key", "bad_reward")
    raise GradingError("no reward file", "no_reward")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise GradingError(f"{where} holds {value}", "bad_reward")
    return value


async def verify_script(task: Task, sandbox: Sandbox, *, timeout: float) -> Verdict:
    data = task.data
    script = data["verifier_script"]
    tb1 = data["verifier"] == "tb1"
    where = f".rollout-grade-{secrets.token_hex(8)}"
    nonce = secrets.token_hex(16)
    await sandbox.upload_archive(tests_archive(data, where))
    command = script_command(where, script, nonce, data.get("verifier_env") or {}, read_log=tb1)
    result = await sandbox.exec(command, timeout=timeout, grading=True)
    blocks, rc, setup = _sections(result.stdout, nonce)
    tail = (result.stderr or "").strip()[-300:]
    shown = "run-tests.sh" if tb1 else f"tests/{script}"
    if result.timed_out:
        raise GradingError(f"{shown} timed out after {result.duration:.0f}s", "timeout")
    if setup is not None:
        raise GradingError(f"the tests could not be put at {TESTS_DIR} (a script verifier needs "
                           f"a slot whose root is writable: an image): {setup}", "cannot_run")
    if rc is None:
        raise GradingError(f"the verifier command did not run (exit {result.exit_code}): "
                           f"{tail or 'no output'}", "cannot_run")
    details: dict[str, Any] = {"verifier": data["verifier"], "script_exit_code": rc,
                               "duration": result.duration, "log_tail": result.stderr[-2000:]}
    if tb1:
        return _grade_tb1(blocks.get("log", ""), data["tests"], rc, tail, details)
    try:
        score, source = parse_reward(blocks)
    except GradingError as e:
        if e.kind == "no_reward" and rc in (126, 127):
            raise GradingError(f"{shown} could not start (exit {rc}): {tail or 'no output'}",
                               "cannot_run") from None
        if e.kind == "no_reward":
            raise GradingError(f"{shown} wrote no {VERIFIER_DIR}/reward.txt or reward.json "
                               f"(exit {rc}): {tail or 'no output'}", "no_reward") from None
        raise
    missing = blocks.get("missing", "").strip()
    if missing and score < 1.0:
        # Not the agent's doing: the script could not run its own tools (uv, pytest, curl,
        # fetched over a network the slot does not have), then wrote a low reward anyway.
        raise GradingError(f"{shown} scored {score:g} after its own commands were not found "
                           f"({missing.splitlines()[0][:200]}): put its tools in the image, give "
                           "the slots network, or grade with the pytest files "
                           "(tasks.verifier=pytest)", "cannot_run")
    details.update(reason=f"reward {score:g} from {source}", reward=score, reward_file=source)
    return Verdict(score=score, details=details)


def _grade_tb1(log: str, wanted: list[str], rc: int, tail: str,
               details: dict[str, Any]) -> Verdict:
    statuses = parse_pytest_log(log)
    if not statuses:
        kind = "cannot_run" if rc in (126, 127) else "no_report"
        raise GradingError(f"run-tests.sh reported no test result (exit {rc}): "
                           f"{tail or 'no output'}", kind)

    def key(node: str) -> tuple[str, str]:
        file, _, func = node.partition("::")
        return posixpath.basename(file), func.split("[", 1)[0]

    per_function = {w: _worst([s for n, s in statuses.items() if key(n) == key(w)])
                    for w in wanted}
    ok = all(s == "PASSED" for s in [*statuses.values(), *per_function.values()])
    if ok:
        reason = "all tests passed"
    elif MISSING in per_function.values():
        reason = "tests missing from run-tests.sh's report"
    else:
        reason = "tests failed"
    details.update(reason=reason, tests=dict(sorted(statuses.items())),
                   f2p_passed=sum(s == "PASSED" for s in per_function.values()),
                   f2p_total=len(per_function))
    return Verdict(score=1.0 if ok else 0.0, details=details)


# Terminal-Bench 1's run-tests.sh prints pytest's own text output; its statuses are read from
# the verbose lines ("tests/test_x.py::test_a[1-2] PASSED  [ 50%]") and the short summary
# ("FAILED tests/test_x.py::test_a - AssertionError"). pytest 9's subtests print SUBFAILED
# lines; the node may also print PASSED (unittest subTests do), so a failed subtest fails it.
_LOG_STATUSES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_LOG_RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2}
_ALT = "|".join(_LOG_STATUSES)
_VERBOSE = re.compile(rf"^(?P<node>\S.*?::.*?) (?P<status>{_ALT})(?: \(.*\))?(?:\s+\[\s*\d+%\])?\s*$")
_SUMMARY = re.compile(rf"^(?P<status>{_ALT}) (?P<node>\S+?::.*?)(?: - .*)?\s*$")
_SUB_SUMMARY = re.compile(r"^SUB(?P<status>FAILED|PASSED|SKIPPED)(?:\[[^\]]*\])?(?:\s*\([^)]*\))?"
                          r"\s+(?P<node>\S+?::.*?)(?: - .*)?\s*$")
_SUB_VERBOSE = re.compile(r"^(?P<node>\S.*?::\S.*?) SUB(?P<status>FAILED|PASSED|SKIPPED)\b")


def parse_pytest_log(log: str) -> dict[str, str]:
    """Per-test status from pytest's verbose text output; a test reported more than once
    keeps its worst status; a failed subtest fails its node."""
    statuses: dict[str, str] = {}

    def put(node: str, status: str) -> None:
        if _LOG_RANK[status] >= _LOG_RANK.get(statuses.get(node, ""), -1):
            statuses[node] = status

    for raw in log.splitlines():
        line = raw.rstrip()
        sub = _SUB_SUMMARY.match(line) or _SUB_VERBOSE.match(line)
        if sub:
            if sub.group("status") == "FAILED":
                put(sub.group("node").strip(), "FAILED")
            continue
        m = _VERBOSE.match(line) or _SUMMARY.match(line)
        if m:
            put(m.group("node").strip(), m.group("status"))
    return statuses
