"""Make SWE-smith-style task instances from your own Python repository.

    python -m rollout.tasks.make_tasks PATH [PATH ...] --out DIR [--max-per-repo 12] [--seed 0]
    python -m rollout.tasks.make_tasks --bundled      # regenerate the instances shipped here

For each repository: commit the clean tree as "Initial commit" on `main`, run its tests once,
then try procedural bugs (`rollout.tasks.bugs`) round-robin over the modifiers. A bug is kept
only if at least one passing test now fails (FAIL_TO_PASS) and at least one still passes
(PASS_TO_PASS). Each kept bug becomes a branch named by its instance_id with HEAD~1 "Bug
Patch" and HEAD "Remove F2P Tests" (the SWE-smith mirror layout). Output: `<name>.bundle`
(the mirror as a git bundle) per repository and `instances.jsonl` in the SWE-smith schema.
The problem statement is written from the failing tests' names and assertion messages, never
from the patch. Generation is deterministic for a given source tree, seed and Python.
"""

from __future__ import annotations

import argparse
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
from rollout.tasks.grading import node_files, parse_pytest_log
from rollout.tasks.loader import BUNDLED_DIR, BUNDLED_JSONL

log = logging.getLogger(__name__)

BUNDLED_REPOS = BUNDLED_DIR / "repos"
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".venv",
                                 "venv", "*.egg-info", ".tox", "build", "dist")
_GIT_ENV = {"GIT_AUTHOR_NAME": "rollout", "GIT_AUTHOR_EMAIL": "rollout@localhost",
            "GIT_COMMITTER_NAME": "rollout", "GIT_COMMITTER_EMAIL": "rollout@localhost",
            "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
            "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": tempfile.gettempdir()}
_SUMMARY_MSG = re.compile(r"^(?:FAILED|ERROR) (\S+?::\S.*?) - (.+)$")


@dataclass
class GeneratorConfig:
    max_per_repo: int = 12
    seed: int = 0
    owner: str = "rollout"
    image_name: str = "rollout-bundled:py311"
    test_timeout: float = 10.0
    python: str = sys.executable


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **_GIT_ENV},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {out.stderr.strip()}")
    return out.stdout


def run_tests(workdir: Path, cfg: GeneratorConfig) -> tuple[dict[str, str], str] | None:
    """Run the whole suite; per-test statuses and the raw log, or None on timeout."""
    cmd = [cfg.python, "-B", "-m", "pytest", "-p", "no:cacheprovider", "-v", "--tb=no",
           "-rfE", "--color=no", "--disable-warnings"]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "300",
           "PYTEST_ADDOPTS": "", "PYTHONPATH": str(workdir)}
    try:
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=cfg.test_timeout)
    except subprocess.TimeoutExpired:
        return None
    text = out.stdout + out.stderr
    return parse_pytest_log(text), text


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
    package = repo_dir.name
    with tempfile.TemporaryDirectory(prefix="make-tasks-") as tmp:
        work = Path(tmp) / package
        shutil.copytree(repo_dir, work, ignore=_IGNORE)
        _git(work, "init", "-q", "-b", "main")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "Initial commit")
        commit8 = _git(work, "rev-parse", "HEAD").strip()[:8]
        name = f"{cfg.owner}__{package}.{commit8}"
        baseline = run_tests(work, cfg)
        if baseline is None:
            raise RuntimeError(f"{repo_dir}: the test suite timed out on the clean tree")
        passing = sorted(t for t, s in baseline[0].items() if s == "PASSED")
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
                result = run_tests(work, cfg)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rollout.tasks.make_tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repos", nargs="*", type=Path, help="repository directories (package name = directory name)")
    ap.add_argument("--out", type=Path, help="output directory for *.bundle and instances.jsonl")
    ap.add_argument("--bundled", action="store_true", help="regenerate the bundled instances")
    ap.add_argument("--max-per-repo", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-name", default="rollout-bundled:py311")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.bundled:
        repos, out = sorted(p for p in BUNDLED_REPOS.iterdir() if p.is_dir()), BUNDLED_DIR
        for old in BUNDLED_DIR.glob("*.bundle"):
            old.unlink()
    elif args.repos and args.out:
        repos, out = args.repos, args.out
    else:
        ap.error("give repository paths and --out DIR, or --bundled")
    cfg = GeneratorConfig(max_per_repo=args.max_per_repo, seed=args.seed, image_name=args.image_name)
    rows = []
    for repo in repos:
        rows += make_instances(repo, out, cfg)
    jsonl = BUNDLED_JSONL if args.bundled else out / "instances.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    log.info("wrote %d instances to %s", len(rows), jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
