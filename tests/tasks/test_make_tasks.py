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
