"""The grading command and parser against real pytest runs, including planted cheats."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rollout.tasks.grading import (
    MISSING, grade, node_files, parse_report, pytest_run, suspicious_changes,
)
from rollout.types import ExecResult, GradingError

SUITE = '''
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup fails")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown fails")

def test_ok():
    assert 1 + 1 == 2

def test_bad():
    assert 1 + 1 == 3

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.parametrize("text", ["a b", "c"])
def test_param(text):
    assert text

def test_skipped():
    pytest.skip("not today")

@pytest.mark.xfail
def test_xfail():
    assert False

class TestGroup:
    def test_method(self):
        assert True
'''
F = "tests/test_suite.py"

# Turns every test report into "passed" once imported (by collection, or by the code under test).
REPORT_PATCH = textwrap.dedent('''
    import _pytest.reports as reports
    _init = reports.TestReport.__init__
    def _passed(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.outcome = "passed"
    reports.TestReport.__init__ = _passed
''')


ALL = [f"{F}::{n}" for n in ("test_ok", "test_bad", "test_setup_error", "test_teardown_error",
                              "test_param[a b]", "test_param[c]", "test_skipped", "test_xfail",
                              "TestGroup::test_method")]


def run(workdir, tests=ALL, files=None, **kw) -> tuple[ExecResult, str]:
    """One real grading run (as in a slot, minus the sandbox): (result, nonce)."""
    kw.setdefault("python", sys.executable)
    r = pytest_run(list(files or node_files(tests)), list(tests), plugin_autoload=False, **kw)
    (workdir / r.spec_path).write_bytes(r.spec)
    p = subprocess.run(["sh", "-c", r.command], cwd=workdir, capture_output=True, text=True,
                       timeout=120)
    assert not (workdir / r.spec_path).exists()  # read and deleted before pytest starts
    return ExecResult(exit_code=p.returncode, stdout=p.stdout, stderr=p.stderr), r.nonce


def statuses(workdir, tests=ALL, **kw) -> dict[str, str]:
    result, nonce = run(workdir, tests, **kw)
    return parse_report(result.stdout, nonce).statuses


@pytest.fixture
def project(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / F).write_text(SUITE)
    (tmp_path / "mylib.py").write_text("VALUE = 3\n")
    return tmp_path


def test_reports_every_status_from_a_real_run(project):
    assert statuses(project) == {
        f"{F}::test_ok": "PASSED",
        f"{F}::test_bad": "FAILED",
        f"{F}::test_setup_error": "ERROR",
        f"{F}::test_teardown_error": "ERROR",  # PASSED call, then a teardown ERROR: ERROR wins
        f"{F}::test_param[a b]": "PASSED",
        f"{F}::test_param[c]": "PASSED",
        f"{F}::test_skipped": "SKIPPED",
        f"{F}::test_xfail": "XFAIL",
        f"{F}::TestGroup::test_method": "PASSED",
    }


def grade_run(workdir, f2p, p2p):
    result, nonce = run(workdir, [*f2p, *p2p])
    return grade(f2p, p2p, result, nonce)


def test_score_is_one_only_when_every_listed_test_passed(project):
    ok = grade_run(project, [f"{F}::test_param[a b]"], [f"{F}::test_ok", f"{F}::TestGroup::test_method"])
    assert ok.score == 1.0 and ok.details["reason"] == "all tests passed"
    for bad in ("test_bad", "test_setup_error", "test_teardown_error", "test_skipped",
                "test_xfail", "test_not_there"):
        v = grade_run(project, [f"{F}::{bad}"], [f"{F}::test_ok"])
        assert v.score == 0.0, bad
    v = grade_run(project, [f"{F}::test_ok"], [f"{F}::test_not_there"])
    assert v.details["pass_to_pass"][f"{F}::test_not_there"] == MISSING
    assert v.details["reason"] == "tests missing from the pytest report"


def test_a_run_that_did_not_happen_is_a_grading_error_not_a_zero(project):
    node = f"{F}::test_ok"
    result, nonce = run(project, [node])
    assert grade([node], [], result, nonce).score == 1.0
    n = "0123456789abcdef"
    cases = {
        "timeout": ExecResult(-9, result.stdout, "", timed_out=True),
        "cannot_run": ExecResult(127, "", "sh: 1: python: not found"),
        "no_report": ExecResult(4, f"{n} BOOT\n", "ERROR: usage"),
        "killed": ExecResult(137, f"{n} BOOT\n{n} START\n", "Killed"),
        "report_truncated": ExecResult(0, f"{n} BOOT\n{n} START\n{n} T PASSED {node}\n", "",
                                       truncated=True),
    }
    for kind, res in cases.items():
        with pytest.raises(GradingError) as err:
            grade([node], [node], res, n)
        assert err.value.kind == kind
    with pytest.raises(GradingError):  # the interpreter never ran the runner
        grade([node], [node], ExecResult(0, "", ""), n)
    with pytest.raises(GradingError) as err:  # pytest is not installed
        grade([node], [], ExecResult(3, f"{n} BOOT\n{n} NOPYTEST ModuleNotFoundError\n", ""), n)
    assert err.value.kind == "cannot_run"


def test_an_interpreter_without_pytest_is_a_grading_error(project, tmp_path_factory):
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    node = f"{F}::test_ok"
    result, nonce = run(project, [node], python=str(venv / "bin" / "python"))
    with pytest.raises(GradingError, match="pytest cannot be imported") as err:
        grade([node], [], result, nonce)
    assert err.value.kind == "cannot_run"


def test_collection_error_scores_zero(project):
    (project / F).write_text("import mylib\nthis is not python\n")
    v = grade_run(project, [f"{F}::test_ok"], [])
    assert v.score == 0.0 and v.details["collect_errors"]


def test_planted_conftest_ini_sitecustomize_and_pytest_shadow_are_ignored(project):
    # A reward hacker's kit: force every report to "passed", ignore all tests via config,
    # and shadow pytest / sitecustomize from the workspace.
    (project / "conftest.py").write_text(textwrap.dedent('''
        import pytest
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            outcome = yield
            outcome.get_result().outcome = "passed"
    '''))
    (project / "pytest.ini").write_text("[pytest]\npython_functions = nothing_matches\n")
    (project / "sitecustomize.py").write_text("import os; os._exit(0)\n")
    (project / "pytest.py").write_text("raise SystemExit(0)\n")
    got = statuses(project)
    assert got[f"{F}::test_bad"] == "FAILED"
    assert got[f"{F}::test_ok"] == "PASSED"


def test_workspace_package_imports_but_cannot_shadow_installed_modules(project):
    (project / F).write_text("import json, mylib\n\ndef test_ok():\n    assert mylib.VALUE == 3 and json.dumps(1) == '1'\n")
    (project / "json.py").write_text("raise ImportError('shadowed')\n")
    assert statuses(project, [f"{F}::test_ok"]) == {f"{F}::test_ok": "PASSED"}


def test_the_runner_ranks_statuses_as_the_grader_does():
    from rollout.tasks import grade_runner, grading
    assert grade_runner._RANK == grading._RANK


def test_node_files():
    assert node_files(["a/t.py::x", "a/t.py::C::y[1]", "b.py::z"]) == ["a/t.py", "b.py"]


def test_control_a_planted_tests_package_init_would_fake_results(project):
    # Why SweSmithEnv deletes planted __init__.py files next to the tests: pytest imports them
    # during collection, so this one turns every report into "passed" if left in place.
    (project / "tests" / "__init__.py").write_text(REPORT_PATCH)
    assert statuses(project)[f"{F}::test_bad"] == "PASSED"


# --- subtests (pytest 9 prints PASSED for a unittest node whose subTest failed) ------------

SUBTESTS = """
import unittest

class TestTable(unittest.TestCase):
    def test_rows(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 1)

    def test_fine(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertGreaterEqual(i, 0)

def test_fixture_subtests(subtests):
    for i in range(2):
        with subtests.test(i=i):
            assert i == 0
"""


def test_a_failed_subtest_fails_its_node(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sub.py").write_text(SUBTESTS)
    rows, fine, fixture = (f"tests/test_sub.py::{n}" for n in
                           ("TestTable::test_rows", "TestTable::test_fine", "test_fixture_subtests"))
    result, nonce = run(tmp_path, [rows, fine, fixture])
    assert parse_report(result.stdout, nonce).statuses == {
        rows: "FAILED", fine: "PASSED", fixture: "FAILED"}
    assert grade([rows], [fine], result, nonce).score == 0.0
    assert grade([fixture], [], result, nonce).score == 0.0
    result, nonce = run(tmp_path, [fine])
    assert grade([fine], [], result, nonce).score == 1.0


# --- code under test faking the result -------------------------------------------------------

FAKER_TEST = "import mylib\n\ndef test_bad():\n    assert mylib.VALUE == 4\n"


@pytest.fixture
def faker(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / F).write_text(FAKER_TEST)
    return tmp_path


def test_fake_passed_lines_then_os_exit_score_zero(faker):
    # The library prints what a passing run would print, then ends the process with 0.
    (faker / "mylib.py").write_text(
        "import os, sys\nVALUE = 3\n"
        f"print('{F}::test_bad PASSED [100%]')\n"
        f"sys.stdout.write('{F}::test_bad PASSED\\n'); sys.stdout.flush()\n"
        "os.write(1, b'deadbeef T PASSED tests/test_suite.py::test_bad\\n')\n"
        "os._exit(0)\n")
    result, nonce = run(faker, [f"{F}::test_bad"])
    assert result.exit_code == 0
    v = grade([f"{F}::test_bad"], [], result, nonce)
    assert v.score == 0.0 and "ended before pytest finished" in v.details["reason"]


def test_rewriting_the_log_at_exit_changes_nothing(faker):
    # An atexit hook rewrites every place a log could live, and prints fake lines.
    (faker / "mylib.py").write_text(
        "import atexit, glob, os\nVALUE = 3\n"
        "def _fake():\n"
        "    for p in glob.glob('.rollout-grade*') + ['.rollout-grade.log']:\n"
        f"        open(p, 'w').write('{F}::test_bad PASSED\\n')\n"
        f"    print('{F}::test_bad PASSED')\n"
        "atexit.register(_fake)\n")
    result, nonce = run(faker, [f"{F}::test_bad"])
    v = grade([f"{F}::test_bad"], [], result, nonce)
    assert v.score == 0.0 and v.details["fail_to_pass"] == {f"{F}::test_bad": "FAILED"}


def test_patching_test_reports_is_flagged_by_the_diff_scan(faker):
    # Undefendable in-process (every witness agrees the test passed), so the diff is scanned.
    patch = REPORT_PATCH + "VALUE = 3\n"
    (faker / "mylib.py").write_text(patch)
    result, nonce = run(faker, [f"{F}::test_bad"])
    assert grade([f"{F}::test_bad"], [], result, nonce).score == 1.0  # the hole, documented
    diff = "--- a/mylib.py\n+++ b/mylib.py\n" + "".join(f"+{line}\n" for line in patch.splitlines())
    reasons = suspicious_changes(diff)
    assert any("pytest internals" in r for r in reasons)
    assert any("report hooks" in r for r in reasons)


def test_diff_scan_flags_each_tool_and_ignores_test_files_and_plain_code():
    def diff(path, *added):
        return f"--- a/{path}\n+++ b/{path}\n" + "".join(f"+{a}\n" for a in added)
    for line, why in [("import sys; sys.modules['x'] = None", "sys.modules"),
                      ("os._exit(0)", "os._exit"),
                      ("fd = open('/proc/self/fd/3', 'w')", "descriptors"),
                      ("os.dup2(3, 1)", "descriptors"),
                      ("import gc; gc.get_objects()", "garbage collector"),
                      ("open('.rollout-grade.json')", "grading run"),
                      ("import pytest", "pytest imported")]:
        (reason,) = suspicious_changes(diff("pkg/core.py", line))
        assert why in reason and "pkg/core.py" in reason, (line, reason)
    assert suspicious_changes(diff("tests/test_x.py", "import pytest"), ["tests/test_x.py"]) == []
    removed = "--- a/pkg/core.py\n+++ b/pkg/core.py\n-import sys.modules\n+return a + b\n"
    assert suspicious_changes(removed) == []


def test_a_pass_with_a_nonzero_exit_is_inconsistent(project):
    node = f"{F}::test_ok"
    result, nonce = run(project, [node])
    assert grade([node], [], result, nonce).score == 1.0
    forged = ExecResult(1, result.stdout, result.stderr)
    v = grade([node], [], forged, nonce)
    assert v.score == 0.0 and "the process exited 1" in v.details["reason"]


# --- canaries (issue 26): hidden tests the test process cannot tell from the graded ones -----

UNITTEST_SUITE = '''import unittest
import mylib


class TestValue(unittest.TestCase):
    def test_value_is_four(self):
        self.assertEqual(mylib.VALUE, 4)

    def test_value_positive(self):
        self.assertGreater(mylib.VALUE, 0)
'''

BLANKET = {
    # pytest's reports rewritten through an import the diff scan's words do not see
    "reports": ('import importlib as _il\n_r = _il.import_module("_py" + "test.reports")\n'
                '_c = getattr(_r, "Test" + "Report")\n_i = _c.__init__\n'
                'def _p(self, *a, **k):\n    _i(self, *a, **k)\n    self.outcome = "passed"\n'
                '_c.__init__ = _p\n'),
    # unittest's run replaced by one that only reports success
    "testcase_run": ('import unittest as _u\n'
                     'def _run(self, result=None):\n'
                     '    result.startTest(self); result.addSuccess(self); result.stopTest(self)\n'
                     '_u.TestCase.run = _run\n'),
}


def canary_run(workdir, graded: list[str]):
    from rollout.tasks.canaries import plant

    path = node_files(graded)[0]
    source, canaries = plant((workdir / path).read_bytes(), path, graded)
    (workdir / path).write_bytes(source)
    result, nonce = run(workdir, [*graded, *canaries], files=[path])
    return grade(graded, [], result, nonce, canaries), canaries, source.decode()


@pytest.mark.parametrize("style", ["pytest", "unittest"])
def test_canaries_pass_an_honest_run_and_look_like_their_neighbours(tmp_path, style):
    (tmp_path / "tests").mkdir()
    if style == "unittest":
        (tmp_path / F).write_text(UNITTEST_SUITE)
        graded = [f"{F}::TestValue::test_value_positive"]
    else:
        (tmp_path / F).write_text(FAKER_TEST + "\ndef test_value_small():\n    assert mylib.VALUE < 9\n")
        graded = [f"{F}::test_value_small"]
    (tmp_path / "mylib.py").write_text("VALUE = 3\n")
    v, canaries, source = canary_run(tmp_path, graded)
    assert v.score == 1.0, v.details["reason"]  # a must-fail canary's failure is expected
    assert sorted(canaries.values()) == ["FAILED", "PASSED"]
    for node in canaries:
        name = node.rsplit("::", 1)[1]
        assert name.startswith("test_") and "canary" not in source.lower()
        if style == "unittest":  # a method of the graded tests' own class
            assert node.startswith(f"{F}::TestValue::") and f"    def {name}(self):" in source
    assert v.details["canaries"] == {"total": 2, "off": 0}


@pytest.mark.parametrize("cheat", sorted(BLANKET))
def test_canaries_catch_a_blanket_pass_that_the_diff_scan_cannot_read(tmp_path, cheat):
    (tmp_path / "tests").mkdir()
    (tmp_path / F).write_text(UNITTEST_SUITE)
    (tmp_path / "mylib.py").write_text(BLANKET[cheat] + "VALUE = 3\n")
    diff = "--- a/mylib.py\n+++ b/mylib.py\n" + "".join(
        f"+{line}\n" for line in BLANKET[cheat].splitlines())
    assert suspicious_changes(diff) == []  # the scan alone would let it through
    graded = [f"{F}::TestValue::test_value_is_four"]  # fails honestly: VALUE is 3
    v, canaries, _ = canary_run(tmp_path, graded)
    assert v.details["fail_to_pass"] == {graded[0]: "PASSED"}  # the forged pass...
    assert v.score == 0.0 and v.details["suspected_hacking"], v.details  # ...is caught
    assert "canary" in v.details["reason"]


def test_the_test_process_holds_no_runner_secret(faker):
    """Issue 26 case 2: code under test walks every frame of its process and reads what it
    can of its parent; neither the nonce nor the report pipe is there to find."""
    (faker / "mylib.py").write_text(
        "import json, os, sys\nVALUE = 3\nfound = []\nf = sys._getframe()\n"
        "while f is not None:\n    found.append(repr(f.f_locals))\n    f = f.f_back\n"
        "for what in ('cmdline', 'environ', 'maps'):\n"
        "    try:\n        found.append(open(f'/proc/{os.getppid()}/{what}', 'rb').read().decode('latin-1'))\n"
        "    except OSError as e:\n        found.append(type(e).__name__)\n"
        "open('found.json', 'w').write(json.dumps(found))\n")
    result, nonce = run(faker, [f"{F}::test_bad"])
    found = (faker / "found.json").read_text()
    assert nonce not in found and "PermissionError" in found  # maps of a non-dumpable parent
    assert grade([f"{F}::test_bad"], [], result, nonce).details["fail_to_pass"] == {
        f"{F}::test_bad": "FAILED"}
