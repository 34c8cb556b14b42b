"""The task generator on a user's repo, the bug modifiers, and the shipped mirror layout."""

from __future__ import annotations

import ast
import json
import subprocess
import textwrap

import pytest

from rollout.tasks import TaskSourceConfig, load_tasks
from rollout.tasks.bugs import MODIFIERS, candidates
from rollout.tasks.loader import BUNDLED_DIR
from rollout.tasks.make_tasks import (BUNDLED_REPOS, BUNDLED_SETTINGS, GeneratorConfig,
                                      find_package, load_settings, run_tests)
from rollout.tasks.make_tasks import main as make_tasks_main

SAMPLE = textwrap.dedent('''
    def f(xs, limit):
        """Doc."""
        if not xs:
            return 0
        total = 0
        for x in xs:
            if x > limit:
                total += 1
            else:
                total -= x
        while total > 100 and limit:
            total = total // 2 - 1
        with open(__file__) as fh:
            fh.read()
        try:
            total = total % 7
        except ZeroDivisionError:
            pass
        return total
''')


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_every_modifier_makes_valid_single_site_changes():
    seen = set()
    for cand in candidates(SAMPLE, "m.py"):
        ast.parse(cand.source)  # still valid Python
        assert cand.source != SAMPLE
        seen.add(cand.strategy)
    assert seen == set(MODIFIERS)
    again = [(c.strategy, c.site, c.source) for c in candidates(SAMPLE, "m.py")]
    assert again == [(c.strategy, c.site, c.source) for c in candidates(SAMPLE, "m.py")]


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("user") / "minimath"
    (root / "minimath").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "minimath" / "__init__.py").write_text(textwrap.dedent('''
        def clamp(x, lo, hi):
            if x < lo:
                return lo
            if x > hi:
                return hi
            return x


        def mean(xs):
            total = 0
            for x in xs:
                total += x
            return total / len(xs)
    '''))
    (root / "tests" / "test_clamp.py").write_text(textwrap.dedent('''
        from minimath import clamp

        def test_low():
            assert clamp(-5, 0, 10) == 0

        def test_high():
            assert clamp(50, 0, 10) == 10

        def test_inside():
            assert clamp(5, 0, 10) == 5
    '''))
    (root / "tests" / "test_mean.py").write_text(textwrap.dedent('''
        from minimath import mean

        def test_mean():
            assert mean([1, 2, 3]) == 2

        def test_mean_single():
            assert mean([4]) == 4
    '''))
    return root


@pytest.fixture(scope="module")
def generated(user_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert make_tasks_main([str(user_repo), "--out", str(out), "--max-per-repo", "3"]) == 0
    return out


def test_generator_makes_loadable_validated_instances(generated):
    tasks = load_tasks(TaskSourceConfig(source=str(generated / "instances.jsonl")))
    assert len(tasks) == 3
    for t in tasks:
        assert t.data["FAIL_TO_PASS"] and t.data["PASS_TO_PASS"]
        assert t.data["repo"].startswith("swesmith/rollout__minimath.")
        assert "minimath" in t.instruction
        removed = [ln[1:].strip() for ln in t.data["patch"].splitlines()
                   if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
        assert not any(len(r) > 8 and r in t.instruction for r in removed)  # not from the patch


def test_generator_writes_the_swe_smith_mirror_layout(generated, tmp_path):
    bundle = next(generated.glob("*.bundle"))
    clone = tmp_path / "m"
    subprocess.run(["git", "clone", "-q", "--mirror", str(bundle), str(clone)], check=True)
    assert git(clone, "log", "--format=%s", "main").split("\n")[0] == "Initial commit"
    for row in map(json.loads, (generated / "instances.jsonl").read_text().splitlines()):
        branch = row["instance_id"]
        assert git(clone, "log", "--format=%s", branch).splitlines() == [
            "Remove F2P Tests", "Bug Patch", "Initial commit"]
        head = set(git(clone, "ls-tree", "-r", "--name-only", branch).split())
        pre = set(git(clone, "ls-tree", "-r", "--name-only", f"{branch}~1").split())
        f2p_files = {n.split("::")[0] for n in row["FAIL_TO_PASS"]}
        assert f2p_files <= pre and not f2p_files & head
        assert git(clone, "diff", "main", f"{branch}~1") == row["patch"]


def test_shipped_bundles_follow_the_mirror_layout():
    tasks = load_tasks(TaskSourceConfig())
    by_repo: dict[str, list] = {}
    for t in tasks:
        by_repo.setdefault(t.data["repo_name"], []).append(t)
    for name, group in by_repo.items():
        bundle = BUNDLED_DIR / f"{name}.bundle"
        heads = git(BUNDLED_DIR, "bundle", "list-heads", str(bundle))
        assert "refs/heads/main" in heads
        for t in group:
            assert f"refs/heads/{t.task_id}\n" in heads
    assert sum(p.stat().st_size for p in BUNDLED_DIR.glob("*.bundle")) < 200_000


def write_tree(root, files: dict[str, str]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


SRC_LAYOUT = {
    "src/minisrc/__init__.py": """
        def clamp(x, lo, hi):
            if x < lo:
                return lo
            if x > hi:
                return hi
            return x
    """,
    "tests/test_clamp.py": """
        from minisrc import clamp

        def test_low():
            assert clamp(-5, 0, 10) == 0

        def test_high():
            assert clamp(50, 0, 10) == 10

        def test_inside():
            assert clamp(5, 0, 10) == 5
    """,
}


def test_a_src_layout_repo_makes_instances(tmp_path):
    repo = write_tree(tmp_path / "minisrc", SRC_LAYOUT)
    assert find_package(repo) == ("minisrc", "src")
    assert find_package(BUNDLED_REPOS / "textkit") == ("textkit", "")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"minisrc": {"max_per_repo": 2}}))
    out = tmp_path / "out"
    assert make_tasks_main([str(repo), "--out", str(out), "--settings", str(settings)]) == 0
    tasks = load_tasks(TaskSourceConfig(source=str(out / "instances.jsonl")))
    assert len(tasks) == 2  # capped by the repo's setting, not --max-per-repo
    for t in tasks:
        assert "diff --git a/src/minisrc/__init__.py" in t.data["patch"]
        assert "`minisrc`" in t.instruction
        assert set(t.data["FAIL_TO_PASS"]) | set(t.data["PASS_TO_PASS"]) <= {
            "tests/test_clamp.py::test_low", "tests/test_clamp.py::test_high",
            "tests/test_clamp.py::test_inside"}


SUBTESTS = """
    import unittest

    class TestParity(unittest.TestCase):
        def test_evens(self):
            for i in (0, 2, 3, 4):
                with self.subTest(i=i):
                    self.assertEqual(i % 2, 0)

        def test_plain(self):
            self.assertTrue(True)
"""


def test_a_failed_subtest_fails_its_test(tmp_path):
    work = write_tree(tmp_path / "w", {"tests/test_parity.py": SUBTESTS})
    result = run_tests(work, GeneratorConfig())
    assert result is not None
    statuses, text = result
    node = "tests/test_parity.py::TestParity::test_evens"
    assert statuses == {node: "FAILED", "tests/test_parity.py::TestParity::test_plain": "PASSED"}
    if "SUBFAILED" in text:  # pytest >= 9 prints the node PASSED as well
        assert f"{node} PASSED" in text


ASYNC_TEST = """
    import asyncio
    import pytest

    @pytest.mark.asyncio
    async def test_sleep():
        assert await asyncio.sleep(0, result=3) == 3

    def test_sync():
        assert True
"""


def test_plugin_autoload_is_off_unless_asked_for(tmp_path):
    pytest.importorskip("pytest_asyncio")
    work = write_tree(tmp_path / "w", {"tests/test_async.py": ASYNC_TEST})
    off, _ = run_tests(work, GeneratorConfig())
    on, _ = run_tests(work, GeneratorConfig(plugin_autoload=True))
    assert off["tests/test_async.py::test_sync"] == on["tests/test_async.py::test_sync"] == "PASSED"
    assert off.get("tests/test_async.py::test_sleep") != "PASSED"
    assert on["tests/test_async.py::test_sleep"] == "PASSED"


def test_settings_are_validated(tmp_path):
    bad = tmp_path / "s.json"
    for text, why in [('{"r": {"max_per_repo": "2"}}', "wrong type"),
                      ('{"r": {"maxperrepo": 2}}', "unknown setting r.maxperrepo"),
                      ('{"r": {"plugin_autoload": 1}}', "wrong type"),
                      ('["r"]', "expected an object"), ("{", "cannot read")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=why):
            load_settings(bad)
    with pytest.raises(SystemExit):
        make_tasks_main([str(tmp_path), "--out", str(tmp_path / "o"), "--settings", str(bad)])


def test_shipped_instances_follow_the_repo_settings():
    """bundled/repos/repos.json caps the newer repos at 2 instances; the async repo, and only
    it, is graded with pytest plugins loaded (its repos.json entry is its grading profile)."""
    settings = load_settings(BUNDLED_SETTINGS)
    tasks = load_tasks(TaskSourceConfig())
    per_repo: dict[str, int] = {}
    for t in tasks:
        dir_name = t.data["repo_name"].split("__", 1)[1].rsplit(".", 1)[0]
        per_repo[dir_name] = per_repo.get(dir_name, 0) + 1
    assert set(per_repo) == {p.name for p in BUNDLED_REPOS.iterdir() if p.is_dir()}
    for name, count in per_repo.items():
        assert count == settings.get(name, {}).get("max_per_repo", 12), name
    assert sorted(n for n, s in settings.items() if s.get("plugin_autoload")) == ["workpool"]
    cfg = TaskSourceConfig(pytest_plugin_autoload=False)
    for t in tasks:
        expected = True if "__workpool." in t.data["repo"] else None
        assert cfg.profile(t.data["repo"]).plugin_autoload is expected, t.data["repo"]
