"""RepoCache: one fetch per repo under concurrent coroutines and processes; sources; errors."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import tarfile

import pytest

from rollout.tasks import TaskSourceConfig, load_tasks
from rollout.tasks.grading import node_files
from rollout.tasks.loader import BUNDLED_DIR
from rollout.tasks.repo_cache import RepoCache, RepoError, RepoNameError


@pytest.fixture(scope="module")
def task():
    return load_tasks(TaskSourceConfig())[0]


def names_in(archive: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as t:
        return {m.name for m in t.getmembers() if m.isfile()}


async def test_many_coroutines_fetch_once_and_share_artifacts(tmp_path, task, caplog):
    cache = RepoCache(tmp_path / "c", [str(BUNDLED_DIR)])
    head = f"refs/heads/{task.task_id}"
    with caplog.at_level(logging.INFO, logger="rollout.tasks.repo_cache"):
        archives = await asyncio.gather(*(cache.archive(task.data["repo"], head) for _ in range(20)))
    assert len({id(a) for a in archives}) == 1  # one git archive, shared
    assert sum("cached repo" in r.message for r in caplog.records) == 1
    files = names_in(archives[0])
    assert not any(n.startswith(".git") for n in files)
    f2p = set(node_files(task.data["FAIL_TO_PASS"]))
    assert not f2p & files  # HEAD hides the F2P test files...
    assert f2p <= set(await cache.list_files(task.data["repo"], f"{head}~1"))  # ...HEAD~1 has them
    changed = await cache.changed_files(task.data["repo"], f"{head}~1", head)
    assert set(changed) == f2p


def test_several_processes_fetch_once(tmp_path, task):
    code = (
        "import asyncio, logging, sys\n"
        "from rollout.tasks.repo_cache import RepoCache\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        f"c = RepoCache({str(tmp_path / 'c')!r}, [{str(BUNDLED_DIR)!r}])\n"
        f"print(len(asyncio.run(c.archive({task.data['repo']!r}, 'refs/heads/{task.task_id}'))))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("cached repo") for o in outs) == 1
    assert len({o.splitlines()[-1] for o in outs}) == 1  # same archive size everywhere
    assert not list((tmp_path / "c").glob(".*.git.*"))  # no temp clone left behind


async def test_local_repo_and_url_template_sources(tmp_path, task):
    name = task.data["repo_name"]
    mirror = tmp_path / "mirrors" / name
    subprocess.run(["git", "clone", "-q", "--mirror", str(BUNDLED_DIR / f"{name}.bundle"),
                    str(mirror)], check=True)
    head = f"refs/heads/{task.task_id}"
    by_dir = RepoCache(tmp_path / "a", [str(tmp_path / "nothing-here"), str(tmp_path / "mirrors")])
    by_url = RepoCache(tmp_path / "b", [f"file://{tmp_path}/mirrors/{{name}}"])
    a = await by_dir.archive(task.data["repo"], head)
    b = await by_url.archive(task.data["repo"], head)
    assert names_in(a) == names_in(b)


async def test_missing_repo_and_missing_ref_say_what_to_do(tmp_path, task):
    cache = RepoCache(tmp_path / "c", [str(BUNDLED_DIR)])
    with pytest.raises(RepoError, match="no source for repo 'swesmith/nobody__nothing.1234'.*repo_sources"):
        await cache.ensure_repo("swesmith/nobody__nothing.1234")
    with pytest.raises(RepoError, match="has no revision 'refs/heads/no-such-branch'"):
        await cache.archive(task.data["repo"], "refs/heads/no-such-branch")
    broken = RepoCache(tmp_path / "d", ["file:///nonexistent/{name}.git"])
    with pytest.raises(RepoError, match="could not fetch repo"):
        await broken.ensure_repo(task.data["repo"])


async def test_a_cached_mirror_fetches_a_branch_added_upstream(tmp_path, task):
    name = task.data["repo_name"]
    upstream = tmp_path / "up" / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(BUNDLED_DIR / f"{name}.bundle"),
                    str(upstream)], check=True)
    cache = RepoCache(tmp_path / "c", [str(tmp_path / "up")])
    await cache.ensure_repo(task.data["repo"])
    subprocess.run(["git", "branch", "new-instance", "main"], cwd=upstream, check=True)
    assert await cache.resolve(task.data["repo"], "refs/heads/new-instance")


def make_repo(root, files: dict[str, str]) -> str:
    """A real (non-bare) git repo at `root` with one commit; returns its commit id."""
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    env = ["-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), *env, "commit", "-q", "-m", "one"], check=True)
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


async def test_an_owner_slash_name_repo_from_an_owner_directory(tmp_path):
    files = {"somerepo/__init__.py": "X = 1\n", "tests/test_x.py": "def test_x(): pass\n"}
    make_repo(tmp_path / "sources" / "someowner" / "somerepo", files)
    cache = RepoCache(tmp_path / "cache", [str(tmp_path / "nothing-here"), str(tmp_path / "sources")])
    archive = await cache.archive("someowner/somerepo", "main")
    assert names_in(archive) == set(files)
    assert sorted(await cache.list_files("someowner/somerepo", "main")) == sorted(files)
    assert await cache.read_file("someowner/somerepo", "main", "somerepo/__init__.py") == b"X = 1\n"
    # One flat mirror and lock file; nothing nested under the cache directory.
    assert cache.repo_path("someowner/somerepo") == tmp_path / "cache" / "someowner__somerepo.git"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "someowner__somerepo.git", "someowner__somerepo.lock"]
    again = RepoCache(tmp_path / "cache", [])  # a second process finds the cached mirror
    assert names_in(await again.archive("someowner/somerepo", "main")) == set(files)


async def test_owner_slash_name_source_layouts_and_url_templates(tmp_path):
    flat = make_repo(tmp_path / "flat" / "work", {"a.py": "a\n"})
    subprocess.run(["git", "clone", "-q", "--mirror", str(tmp_path / "flat" / "work"),
                    str(tmp_path / "flat" / "pallets__click.git")], check=True)
    by_name = make_repo(tmp_path / "byname" / "click", {"b.py": "b\n"})
    swesmith = make_repo(tmp_path / "nested" / "swesmith" / "o__p.1234", {"c.py": "c\n"})
    url = make_repo(tmp_path / "gh" / "pallets" / "click", {"d.py": "d\n"})
    cases = [
        ([str(tmp_path / "flat")], "pallets/click", flat),      # <dir>/<owner__name>.git
        ([str(tmp_path / "byname")], "pallets/click", by_name),  # <dir>/<name>
        ([str(tmp_path / "nested")], "swesmith/o__p.1234", swesmith),  # <dir>/<owner>/<name>
        ([f"file://{tmp_path}/gh/{{repo}}"], "pallets/click", url),    # {repo} = owner/name
        ([f"{tmp_path}/gh/pallets/{{name}}"], "pallets/click", url),   # {name} = name
    ]
    for i, (sources, repo, commit) in enumerate(cases):
        cache = RepoCache(tmp_path / f"cache{i}", sources)
        assert await cache.resolve(repo, "main") == commit, (sources, repo)


@pytest.mark.parametrize("bad, why", [
    ("../escape", "contains '..'"),
    ("owner/../../etc", "contains '..'"),
    ("/abs/repo", "absolute path"),
    ("owner//name", "empty path component"),
    ("owner/name/", "empty path component"),
    ("swesmith/", "empty path component"),
    ("owner/na me", "component 'na me' must be made of letters"),
    ("owner/name;rm", "component 'name;rm'"),
    ("own\\er/name", "component 'own\\\\\\\\er'"),
    ("./name", "component '.'"),
    ("", "is empty"),
])
async def test_unsafe_repo_names_are_rejected_before_touching_the_disk(tmp_path, bad, why):
    cache = RepoCache(tmp_path / "cache", [str(tmp_path)])
    with pytest.raises(RepoNameError, match=why):
        await cache.ensure_repo(bad)
    with pytest.raises(RepoError):  # still a RepoError for callers that catch those
        await cache.archive(bad, "main")
    assert not (tmp_path / "cache").exists()
