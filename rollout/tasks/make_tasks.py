"""Make SWE-smith-style task instances from your own Python repository.

    python -m rollout.tasks.make_tasks PATH [PATH ...] --out DIR [--max-per-repo 12] [--seed 0]
        [--plugin-autoload] [--settings FILE]
    python -m rollout.tasks.make_tasks --bundled      # regenerate the instances shipped here

For each repository: commit the clean tree as "Initial commit" on `main`, run its tests once,
then try procedural bugs (`rollout.tasks.bugs`) round-robin over the modifiers. A bug is kept
only if at least one passing test now fails (FAIL_TO_PASS) and at least one still passes
(PASS_TO_PASS). Each kept bug becomes a branch named by its instance_id with HEAD~1 "Bug
Patch" and HEAD "Remove F2P Tests" (the SWE-smith mirror layout). Output: `<name>.bundle`
(the mirror as a git bundle) per repository and `instances.jsonl` in the SWE-smith schema.
The problem statement is written from the failing tests' names and assertion messages, never
from the patch. Generation is deterministic for a given source tree, seed and Python.

The package is `<repo>/<name>/` (name = the repo directory's name) or, in a src layout,
`<repo>/src/<name>/` (or the only package under `src/`); a src layout's tests run with `src`
importable. Test outcomes come from pytest's report hooks (a small recorder plugin), not from
its terminal output: a test fails if any of its reports fails, subtests included (pytest 9
prints a unittest test whose `subTest`s failed as `SUBFAILED(...)` lines *and* `PASSED`).
Installed pytest plugins are not loaded unless `--plugin-autoload` (or a repo's
`plugin_autoload` setting) asks for them, e.g. for a suite of `pytest-asyncio` tests; the
rows record nothing about it, so grade such a repo with plugins loaded (a `tasks.profiles`
entry with `plugin_autoload: true`; the bundled repos' profiles are read from repos.json).

`--settings FILE` is a JSON object of per-repo settings keyed by repo directory name:
`max_per_repo`, `plugin_autoload`, `test_timeout`. `--bundled` uses `bundled/repos/repos.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rollout.tasks.bugs import MODIFIERS, Candidate, candidates
from rollout.tasks.grading import node_files
from rollout.tasks.loader import BUNDLED_DIR, BUNDLED_JSONL

log = logging.getLogger(__name__)

BUNDLED_REPOS = BUNDLED_DIR / "repos"
BUNDLED_SETTINGS = BUNDLED_REPOS / "repos.json"
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".venv",
                                 "venv", "*.egg-info", ".tox", "build", "dist")
_GIT_ENV = {"GIT_AUTHOR_NAME": "rollout", "GIT_AUTHOR_EMAIL": "rollout@localhost",
            "GIT_COMMITTER_NAME": "rollout", "GIT_COMMITTER_EMAIL": "rollout@localhost",
            "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
            "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": tempfile.gettempdir()}
_SUMMARY_MSG = re.compile(r"^(?:FAILED|ERROR) (\S+?::\S.*?) - (.+)$")
# pytest 9 subtests: "SUBFAILED(i=1) <node> - msg", "SUBFAILED[msg] (i=1) <node> - msg"
_SUBTEST_MSG = re.compile(r"^SUBFAILED(?:\[[^\]]*\])?\s*(?:\([^)]*\))?\s+(\S+?::\S.*?) - (.+)$")

# Runs pytest with a plugin that records every test's worst outcome over all of its reports
# (setup, call, teardown, and each subtest) into the JSON file named by argv[1].
_RUNNER = r"""
import json, sys
import pytest

RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "XPASS": 1, "FAILED": 2, "ERROR": 2}


class Recorder:
    def __init__(self):
        self.status = {}

    def put(self, node, status):
        if RANK[status] >= RANK.get(self.status.get(node), -1):
            self.status[node] = status

    def pytest_runtest_logreport(self, report):
        subtest = type(report).__name__ == "SubtestReport"
        if report.failed:
            self.put(report.nodeid, "FAILED" if report.when == "call" else "ERROR")
        elif hasattr(report, "wasxfail"):
            self.put(report.nodeid, "XFAIL" if report.skipped else "XPASS")
        elif report.skipped:
            self.put(report.nodeid, "SKIPPED")
        elif report.when == "call" and not subtest:
            self.put(report.nodeid, "PASSED")


recorder = Recorder()
code = int(pytest.main(sys.argv[2:], plugins=[recorder]))
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump({"exit": code, "status": recorder.status}, f)
sys.exit(code)
"""
_SETTINGS_KEYS = {"max_per_repo": int, "plugin_autoload": bool, "test_timeout": (int, float)}


@dataclass
class GeneratorConfig:
    max_per_repo: int = 12
    seed: int = 0
    owner: str = "rollout"
    image_name: str = "rollout-bundled:py311"
    test_timeout: float = 10.0
    python: str = sys.executable
    plugin_autoload: bool = False  # load installed pytest plugins (pytest-asyncio, ...)


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **_GIT_ENV},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {out.stderr.strip()}")
    return out.stdout


def run_tests(workdir: Path, cfg: GeneratorConfig,
              import_root: str = "") -> tuple[dict[str, str], str] | None:
    """Run the whole suite; per-test statuses and the raw log, or None on timeout.

    `import_root` ("src" for a src layout) is put on PYTHONPATH after the work tree. A test
    is PASSED only if none of its reports (subtests included) failed; a run that crashed
    before pytest finished reports no test at all."""
    with tempfile.TemporaryDirectory(prefix="make-tasks-run-") as tmp:
        results = Path(tmp) / "results.json"
        cmd = [cfg.python, "-B", "-c", _RUNNER, str(results), "-p", "no:cacheprovider", "-v",
               "--tb=no", "-rfE", "--color=no", "--disable-warnings"]
        paths = [str(workdir)] + ([str(workdir / import_root)] if import_root else [])
        env = {**os.environ, "COLUMNS": "300", "PYTEST_ADDOPTS": "",
               "PYTHONPATH": os.pathsep.join(paths)}
        env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        if not cfg.plugin_autoload:
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        try:
            out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                                 timeout=cfg.test_timeout)
        except subprocess.TimeoutExpired:
            return None
        try:
            statuses = json.loads(results.read_text(encoding="utf-8"))["status"]
        except (OSError, ValueError, KeyError):
            log.debug("no results from the test run in %s (exit %d)", workdir, out.returncode)
            statuses = {}
    return statuses, out.stdout + out.stderr


def find_package(repo_dir: Path) -> tuple[str, str]:
    """The package under test and its import root: `(<dir name>, "")` for `<repo>/<name>/`,
    `(<name>, "src")` for a src layout (`src/<dir name>/`, or the only package in `src/`)."""
    name = repo_dir.name
    src = repo_dir / "src"
    if (repo_dir / name / "__init__.py").is_file() or not src.is_dir():
        return name, ""
    if (src / name / "__init__.py").is_file():
        return name, "src"
    found = sorted(p.name for p in src.iterdir() if (p / "__init__.py").is_file())
    if len(found) == 1:
        return found[0], "src"
    return name, ""


def _is_test_file(rel: str) -> bool:
    name = os.path.basename(rel)
    parts = rel.split("/")
    return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
            or "tests" in parts[:-1] or "test" in parts[:-1] or name == "setup.py")


def _round_robin(cands: list[Candidate], seed: int) -> list[Candidate]:
    """Interleave strategies so a capped run still covers every modifier."""
    by_strategy: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        by_strategy[c.strategy].append(c)
    rng = random.Random(seed)
    queues = []
    for name in MODIFIERS:
        group = by_strategy.get(name, [])
        rng.shuffle(group)
        queues.append(group)
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop())
    return out


def problem_statement(package: str, f2p: list[str], log_text: str) -> str:
    """Describe the bug from the failing behaviour: test names and assertion messages."""
    messages = {}
    for line in log_text.splitlines():
        m = _SUMMARY_MSG.match(line.strip())
        if m:
            messages[m.group(1)] = m.group(2).strip()
            continue
        m = _SUBTEST_MSG.match(line.strip())
        if m:  # a unittest subTest's failure: its node's own line may say PASSED
            messages.setdefault(m.group(1), m.group(2).strip())
    shown = f2p[:3]
    lines = [f"Something is broken in `{package}`: {len(f2p)} check(s) that used to pass now fail.",
             "", "Observed behaviour:"]
    for node in shown:
        func = node.split("::")[-1].replace("_", " ")
        msg = messages.get(node, "the check fails")
        lines.append(f"- {func}: {msg}")
    if len(f2p) > len(shown):
        lines.append(f"- ... and {len(f2p) - len(shown)} more")
    lines += ["", "Please fix the library so that this behaves as intended again."]
    return "\n".join(lines)


def make_instances(repo_dir: Path, out_dir: Path, cfg: GeneratorConfig) -> list[dict]:
    """Build the mirror of one repository, write `<name>.bundle`, return its JSONL rows."""
    repo_dir = Path(repo_dir).resolve()
    package, import_root = find_package(repo_dir)
    with tempfile.TemporaryDirectory(prefix="make-tasks-") as tmp:
        work = Path(tmp) / repo_dir.name
        shutil.copytree(repo_dir, work, ignore=_IGNORE)
        _git(work, "init", "-q", "-b", "main")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "Initial commit")
        commit8 = _git(work, "rev-parse", "HEAD").strip()[:8]
        name = f"{cfg.owner}__{package}.{commit8}"
        baseline = run_tests(work, cfg, import_root)
        if baseline is None:
            raise RuntimeError(f"{repo_dir}: the test suite timed out on the clean tree")
        passing = sorted(t for t, s in baseline[0].items() if s == "PASSED")
        not_passing = len(baseline[0]) - len(passing)
        if not_passing:
            hint = (" (async tests without their plugin: try --plugin-autoload)"
                    if "async def functions are not natively supported" in baseline[1]
                    and not cfg.plugin_autoload else "")
            log.warning("%s: %d test(s) do not pass on the clean tree and are left out%s",
                        package, not_passing, hint)
        if len(passing) < 2:
            raise RuntimeError(f"{repo_dir}: need at least 2 passing tests, found {len(passing)}")
        sources = [p for p in _git(work, "ls-files", "*.py").split() if not _is_test_file(p)]
        cands = []
        for rel in sorted(sources):
            cands += candidates((work / rel).read_text(), rel)
        rows, seen = [], set()
        for cand in _round_robin(cands, cfg.seed):
            if len(rows) >= cfg.max_per_repo:
                break
            digest = hashlib.sha1(f"{cand.path}\0{cand.source}".encode()).hexdigest()[:8]
            if digest in seen:
                continue
            seen.add(digest)
            original = (work / cand.path).read_text()
            (work / cand.path).write_text(cand.source)
            try:
                result = run_tests(work, cfg, import_root)
            finally:
                (work / cand.path).write_text(original)
            if result is None:
                continue
            statuses, text = result
            f2p = [t for t in passing if statuses.get(t) != "PASSED"]
            p2p = [t for t in passing if statuses.get(t) == "PASSED"]
            if not f2p or not p2p:
                continue
            instance_id = f"{name}.{cand.strategy}__{digest}"
            rows.append(_commit_instance(work, instance_id, cand, f2p, p2p, name, package,
                                         text, cfg))
            log.info("%s: kept %s (%d F2P, %d P2P)", package, instance_id, len(f2p), len(p2p))
        out_dir.mkdir(parents=True, exist_ok=True)
        _git(work, "bundle", "create", "-q", str(out_dir / f"{name}.bundle"), "--all")
    return rows


def _commit_instance(work: Path, instance_id: str, cand: Candidate, f2p: list[str],
                     p2p: list[str], name: str, package: str, log_text: str,
                     cfg: GeneratorConfig) -> dict:
    _git(work, "checkout", "-q", "-b", instance_id, "main")
    (work / cand.path).write_text(cand.source)
    _git(work, "commit", "-q", "-a", "-m", "Bug Patch")
    _git(work, "rm", "-q", "--", *node_files(f2p))
    _git(work, "commit", "-q", "-m", "Remove F2P Tests")
    patch = _git(work, "diff", "main", f"{instance_id}~1")
    _git(work, "checkout", "-q", "main")
    return {
        "instance_id": instance_id,
        "repo": f"swesmith/{name}",
        "patch": patch,
        "FAIL_TO_PASS": f2p,
        "PASS_TO_PASS": p2p,
        "created_at": "2024-01-01T00:00:00",
        "image_name": cfg.image_name,
        "base_commit": _git(work, "rev-parse", "main").strip(),
        "problem_statement": problem_statement(package, f2p, log_text),
    }


def load_settings(path: Path | None) -> dict[str, dict]:
    """Per-repo settings (by repo directory name) from a JSON file; {} without one."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read settings {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object keyed by repo directory name")
    for repo, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {repo!r} must map to an object of settings")
        for key, value in entry.items():
            kind = _SETTINGS_KEYS.get(key)
            if kind is None:
                raise ValueError(f"{path}: unknown setting {repo}.{key}; valid: "
                                 f"{', '.join(sorted(_SETTINGS_KEYS))}")
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{path}: {repo}.{key} has the wrong type: {value!r}")
    return data


def repo_config(cfg: GeneratorConfig, settings: dict[str, dict], repo_dir: Path) -> GeneratorConfig:
    """`cfg` with the settings of `repo_dir` (by directory name) applied."""
    return dataclasses.replace(cfg, **settings.get(Path(repo_dir).resolve().name, {}))


def generate(repos: list[Path], out: Path, cfg: GeneratorConfig, *, settings: dict | None = None,
             jsonl: Path | None = None, prune: bool = False) -> list[dict]:
    """Make the instances of every repo into `out` (bundles, and `instances.jsonl` or
    `jsonl`). Everything is written to a staging directory first and moved into place at the
    end, so a reader of `out` never sees a half-written set; `prune` also removes bundles in
    `out` that this run did not make."""
    settings = settings or {}
    unknown = sorted(set(settings) - {Path(r).resolve().name for r in repos})
    if unknown:
        log.warning("settings for repos not given: %s", ", ".join(unknown))
    jsonl = jsonl or out / "instances.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=".make-tasks-", dir=out) as tmp:
        staging = Path(tmp)
        for repo in repos:
            rows += make_instances(repo, staging, repo_config(cfg, settings, repo))
        with (staging / "instances.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        made_bundles = sorted(staging.glob("*.bundle"))
        for bundle in made_bundles:
            os.replace(bundle, out / bundle.name)
        if prune:
            keep = {b.name for b in made_bundles}
            for old in out.glob("*.bundle"):
                if old.name not in keep:
                    old.unlink()
        os.replace(staging / "instances.jsonl", jsonl)
    log.info("wrote %d instances to %s", len(rows), jsonl)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rollout.tasks.make_tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repos", nargs="*", type=Path,
                    help="repository directories (package name = directory name; "
                         "<repo>/<name>/ or <repo>/src/<name>/)")
    ap.add_argument("--out", type=Path, help="output directory for *.bundle and instances.jsonl")
    ap.add_argument("--bundled", action="store_true", help="regenerate the bundled instances")
    ap.add_argument("--max-per-repo", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-name", default="rollout-bundled:py311")
    ap.add_argument("--plugin-autoload", action="store_true",
                    help="load installed pytest plugins (e.g. pytest-asyncio) when running tests")
    ap.add_argument("--settings", type=Path,
                    help="JSON of per-repo settings by directory name (max_per_repo, "
                         "plugin_autoload, test_timeout); default for --bundled: "
                         "bundled/repos/repos.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.bundled:
        repos, out = sorted(p for p in BUNDLED_REPOS.iterdir() if p.is_dir()), BUNDLED_DIR
        settings_path = args.settings or BUNDLED_SETTINGS
    elif args.repos and args.out:
        repos, out, settings_path = args.repos, args.out, args.settings
    else:
        ap.error("give repository paths and --out DIR, or --bundled")
    try:
        settings = load_settings(settings_path)
    except ValueError as e:
        ap.error(str(e))
    cfg = GeneratorConfig(max_per_repo=args.max_per_repo, seed=args.seed,
                          image_name=args.image_name, plugin_autoload=args.plugin_autoload)
    generate(repos, out, cfg, settings=settings,
             jsonl=BUNDLED_JSONL if args.bundled else None, prune=args.bundled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
