"""Per-repo test profiles: lookup, validation, src-layout detection, and a real src-layout run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rollout.settings.config import ConfigError
from rollout.tasks.config import TaskSourceConfig, GradingProfile
from rollout.tasks.grading import grade, pytest_run
from rollout.tasks.swe_smith import _is_src_layout
from rollout.types import ExecResult
from tests.launch_config import compose_config


def test_profile_lookup_by_full_bare_or_short_repo_name():
    cfg = TaskSourceConfig(profiles={"pallets/click": {"paths": ["src"], "test_timeout": 30},
                                     "tinycalc": {"plugin_autoload": True, "env": {"A": 1}}})
    click = cfg.profile("swesmith/pallets/click")
    assert click.paths == ("src",) and click.test_timeout == 30.0
    assert cfg.profile("rollout/tinycalc").plugin_autoload is True
    assert cfg.profile("rollout/tinycalc").env == (("A", "1"),)
    assert cfg.profile("someone/else") == GradingProfile()


@pytest.mark.parametrize("bad, message", [
    ({"x": {"pythn": "p"}}, "unknown key"),
    ({"x": {"paths": "src"}}, "list of paths"),
    ({"x": {"paths": ["../up"]}}, "relative paths inside the repo"),
    ({"x": {"test_timeout": 0}}, r"tasks.profiles.x.test_timeout must be > 0, got 0"),
    ({"x": ["not", "a", "mapping"]}, "must be a mapping"),
])
def test_bad_profiles_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        TaskSourceConfig(profiles=bad)


def test_profiles_are_plain_overrides(tmp_path):
    cfg = compose_config(["conf=swe_smith", f"run.dir={tmp_path}", "policy=gold",
                          "tasks.profiles.mylib.paths=[src]", "tasks.grading_concurrency=1",
                          "tasks.timeout_retry_factor=3"])
    assert cfg.tasks.profile("owner/mylib").paths == ("src",)
    assert cfg.tasks.grading_concurrency == 1 and cfg.tasks.timeout_retry_factor == 3.0
    with pytest.raises(ConfigError, match="grading_concurrency"):
        compose_config(["conf=swe_smith", f"run.dir={tmp_path}", "policy=gold",
                        "tasks.grading_concurrency=-1"])


def test_src_layout_detection():
    assert _is_src_layout(["src/pkg/__init__.py", "src/pkg/core.py", "tests/test_core.py"])
    assert not _is_src_layout(["pkg/__init__.py", "tests/test_core.py"])
    assert not _is_src_layout(["pkg/__init__.py", "src/pkg/__init__.py"])  # top-level wins
    assert not _is_src_layout(["src/deep/pkg/__init__.py"])


def test_a_src_layout_package_imports_only_with_src_on_the_path(tmp_path):
    (tmp_path / "src" / "ledger").mkdir(parents=True)
    (tmp_path / "src" / "ledger" / "__init__.py").write_text("def total(xs):\n    return sum(xs)\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_ledger.py").write_text(
        "import ledger\n\ndef test_total():\n    assert ledger.total([1, 2]) == 3\n")
    node = "tests/test_ledger.py::test_total"

    def score(paths):
        r = pytest_run(["tests/test_ledger.py"], [node], python=sys.executable, paths=paths,
                       plugin_autoload=False)
        (tmp_path / r.spec_path).write_bytes(r.spec)
        p = subprocess.run(["sh", "-c", r.command], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        return grade([node], [], ExecResult(p.returncode, p.stdout, p.stderr), r.nonce)

    assert score((".",)).score == 0.0  # `python -I` ignores PYTHONPATH: src is not importable
    assert score((".", "src")).score == 1.0


def test_swe_smith_repo_names_find_their_profile_and_bundled_repos_have_theirs():
    cfg = TaskSourceConfig(profiles={"pallets/click": {"paths": ["src"]}})
    assert cfg.profile("swesmith/pallets__click.fde47b4b").paths == ("src",)
    # The bundled async suite needs its plugin; the user's table comes first.
    assert TaskSourceConfig().profile("swesmith/rollout__workpool.7ac578b2").plugin_autoload is True
    mine = TaskSourceConfig(profiles={"workpool": {"plugin_autoload": False}})
    assert mine.profile("swesmith/rollout__workpool.7ac578b2").plugin_autoload is False
    assert TaskSourceConfig().profile("swesmith/rollout__spans.63b1ee43") == GradingProfile()
