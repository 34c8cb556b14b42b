"""The grading command and parser against real pytest runs, including planted cheats."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from rollout.tasks.grading import MISSING, grade, node_files, parse_pytest_log, pytest_command
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


def run(workdir, files=(F,), **kw) -> ExecResult:
    cmd = pytest_command(list(files), plugin_autoload=False, **kw)
    p = subprocess.run(["sh", "-c", cmd], cwd=workdir, capture_output=True, text=True, timeout=120)
    return ExecResult(exit_code=p.returncode, stdout=p.stdout, stderr=p.stderr)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / F).write_text(SUITE)
    (tmp_path / "mylib.py").write_text("VALUE = 3\n")
    return tmp_path


def test_parses_every_status_from_a_real_run(project):
    statuses = parse_pytest_log(run(project).stdout)
    assert statuses == {
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


def test_score_is_one_only_when_every_listed_test_passed(project):
    result = run(project)
    ok = grade([f"{F}::test_param[a b]"], [f"{F}::test_ok", f"{F}::TestGroup::test_method"], result)
    assert ok.score == 1.0 and ok.details["reason"] == "all tests passed"
    for bad in ("test_bad", "test_setup_error", "test_teardown_error", "test_skipped",
                "test_xfail", "test_not_there"):
        v = grade([f"{F}::{bad}"], [f"{F}::test_ok"], result)
        assert v.score == 0.0, bad
    v = grade([f"{F}::test_ok"], [f"{F}::test_not_there"], result)
    assert v.details["pass_to_pass"][f"{F}::test_not_there"] == MISSING
    assert v.details["reason"] == "tests missing from the pytest output"


HEADER = "============================= test session starts ==============================\n"


def test_a_run_that_did_not_happen_is_a_grading_error_not_a_zero():
    node = f"{F}::test_ok"
    passed_log = f"{HEADER}{node} PASSED [100%]\n"
    assert grade([node], [], ExecResult(0, passed_log, "")).score == 1.0
    cases = {
        "timeout": ExecResult(-9, passed_log, "", timed_out=True),
        "cannot_run": ExecResult(127, "", "sh: 1: python: not found"),
        "no_report": ExecResult(1, "/usr/bin/python: No module named pytest\n", ""),
    }
    for kind, result in cases.items():
        with pytest.raises(GradingError) as err:
            grade([node], [node], result)
        assert err.value.kind == kind
    with pytest.raises(GradingError):
        grade([node], [node], ExecResult(0, "", ""))
    # a session that started but reports nothing for the test is the agent's failure
    assert grade([node], [], ExecResult(5, HEADER + "no tests ran\n", "")).score == 0.0


def test_collection_error_scores_zero(project):
    (project / F).write_text("import mylib\nthis is not python\n")
    result = run(project)
    assert "ERROR" in result.stdout
    assert grade([f"{F}::test_ok"], [], result).score == 0.0


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
    statuses = parse_pytest_log(run(project).stdout)
    assert statuses[f"{F}::test_bad"] == "FAILED"
    assert statuses[f"{F}::test_ok"] == "PASSED"


def test_workspace_package_imports_but_cannot_shadow_installed_modules(project):
    (project / F).write_text("import json, mylib\n\ndef test_ok():\n    assert mylib.VALUE == 3 and json.dumps(1) == '1'\n")
    (project / "json.py").write_text("raise ImportError('shadowed')\n")
    assert parse_pytest_log(run(project).stdout) == {f"{F}::test_ok": "PASSED"}


def test_node_files():
    assert node_files(["a/t.py::x", "a/t.py::C::y[1]", "b.py::z"]) == ["a/t.py", "b.py"]


def test_control_a_planted_tests_package_init_would_fake_results(project):
    # Why SweSmithEnv deletes planted __init__.py files next to the tests: pytest imports them
    # during collection, so this one turns every report into "passed" if left in place.
    (project / "tests" / "__init__.py").write_text(textwrap.dedent('''
        import _pytest.reports as reports
        _init = reports.TestReport.__init__
        def _passed(self, *args, **kwargs):
            _init(self, *args, **kwargs)
            self.outcome = "passed"
        reports.TestReport.__init__ = _passed
    '''))
    assert parse_pytest_log(run(project).stdout)[f"{F}::test_bad"] == "PASSED"
