"""The SWE-smith task environment: prompt, tools, slot preparation and grading.

Isolation from the answer: the slot receives a plain tree of the instance branch's HEAD
(the bug, with the F2P test files removed) via `git archive` + `upload_archive`, then a fresh
one-commit git repo is made in the slot so the agent can `git diff`. The mirror's history,
whose `main` holds the clean code, never enters the slot.

Grading never trusts the agent's slot: the workspace is exported host-side and diffed
against the base tree (`rollout.tasks.workspace`), the slot is wiped under the same lease
(a fresh slot), the base tree is laid out again and the diff applied; then the instance's
test files (F2P + P2P files, and files the "Remove F2P Tests" commit deleted), conftest files
and root config files are restored from HEAD~1 on the worker side, hidden canaries are
planted, planted conftest/ini/sitecustomize files are removed, and pytest runs hardened as
described in `rollout.tasks.grading`.

Only `Sandbox.exec/read_file/write_file/upload_archive` are used, so this works over a local
SlotPool, a Ray actor handle or a remote host alike. Safe for many concurrent tasks: all
shared state lives in `RepoCache` (whose guarantees are documented there) and a memo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout.protocols import Sandbox
from rollout.tasks.base import BaseTaskEnv
from rollout.tasks.config import GradingProfile, SweSmithSource, TaskSourceConfig
from rollout.tasks.canaries import plant as canary_plant
from rollout.tasks.grading import (SPEC_FILE, environment_failure, grade, node_files,
                                   pytest_run, suspicious_changes)
from rollout.tasks.loader import BUNDLED_DIR, load_tasks_with_report
from rollout.tasks.registry import TaskKind, register
from rollout.tasks.repo_cache import RepoCache, RepoError, _Memo
from rollout.tasks.workspace import (SKIPPED_TOP, Change, Entry, diff_trees, read_tree,
                                     unified_diff, upload_tar)
from rollout.types import ExecResult, GradingError, SandboxError, Task, ToolCall, Verdict

log = logging.getLogger(__name__)

# Files that change how pytest or the interpreter behave; any not in the original tree is removed.
GUARDED_NAMES = ("conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg",
                 "pyproject.toml", "sitecustomize.py", "usercustomize.py")
# pytest's own precedence for picking its config file at the rootdir.
_INI_MARKERS = (("pytest.ini", None), (".pytest.ini", None),
                ("pyproject.toml", b"[tool.pytest.ini_options]"), ("tox.ini", b"[pytest]"),
                ("setup.cfg", b"[tool:pytest]"))
GOLD_PATCH = ".gold.patch"
GRADE_LOG = ".rollout-grade.log"  # no longer written; removed if an agent plants one
DOOMED_LIST = ".rollout-doomed"  # paths the grading checkout must lose, NUL-separated

CLEAR_ALL = "find . -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +"
CLEAR_WORKDIR = (
    "set -e; if [ -d .git ]; then "
    "git -c core.hooksPath=/dev/null -c safe.directory='*' ls-files -z | xargs -0 -r rm -f --; rm -rf .git; "
    "find . -mindepth 1 -type d -empty -delete; "
    "else find . -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +; fi")

SYSTEM_PROMPT = """You are a software engineer fixing a bug in a Python repository.
The repository is your current working directory. You have three tools:
- terminal(command, timeout?): run a shell command in the repository root (no network; its description says whether `cd` carries over);
- read_file(path): read a file (paths are relative to the repository root);
- write_file(path, content): create or overwrite a file.
Investigate, make the smallest change to the library code that fixes the issue, and check it
(for example by running the existing tests with `python -m pytest -q`). Do not edit or add tests.
When you are done, reply with a short summary and no tool call."""


@dataclass
class InstanceFiles:
    """What grading needs from the mirror, computed once per instance on the worker."""

    restore: dict[str, bytes] = field(default_factory=dict)
    allowed_guarded: set[str] = field(default_factory=set)
    ini_file: str | None = None
    has_conftest: bool = False
    planted_inits: list[str] = field(default_factory=list)  # must not exist when grading
    src_layout: bool = False  # the tree has src/<package>/ and the package is not at the top


class SweSmithEnv(BaseTaskEnv):
    """`rollout.protocols.TaskEnv` for SWE-smith rows (kind "swe_smith")."""

    def __init__(self, cfg: TaskSourceConfig | None = None, cache: RepoCache | None = None) -> None:
        self.cfg = cfg or TaskSourceConfig()
        self.cache = cache or RepoCache(self.cfg.cache_path, [str(BUNDLED_DIR), *self.cfg.repo_sources])
        self._files = _Memo(1024)
        self._bases = _Memo(16)  # task id -> base tree (every file's bytes: kept few)
        # task id -> top-level names a prepared slot has beyond the repo (an image's workdir
        # content: a virtualenv, build products); never exported, never carried over.
        self._image_extras: dict[str, frozenset[str]] = {}
        self._grading_slots: dict[str, asyncio.Semaphore] = {}  # host id -> bound

    # --- prompt ----------------------------------------------------------------------------

    def messages(self, task: Task) -> list[dict[str, Any]]:
        user = (
            f"<issue>\n{task.instruction.strip()}\n</issue>\n\n"
            "Fix this issue by editing the library code in the repository (your working "
            "directory). Tests that reproduce the issue exist but are hidden from you."
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def reference_solution(self, task: Task) -> list[ToolCall]:
        """Write the bug patch and apply it in reverse, as the gold policy's tool calls."""
        return [
            ToolCall("write_file", {"path": GOLD_PATCH, "content": task.data["patch"]}, "gold-1"),
            ToolCall("terminal", {"command": f"git apply -R {GOLD_PATCH} && rm -f {GOLD_PATCH}"},
                     "gold-2"),
        ]

    # --- slot ------------------------------------------------------------------------------

    @staticmethod
    def _head(task: Task) -> str:
        return f"refs/heads/{task.data['instance_id']}"

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        repo = task.data["repo"]
        try:
            archive = await self.cache.archive(repo, self._head(task))
        except RepoError as e:
            raise SandboxError(f"cannot prepare {task.task_id}: {e}") from e
        # An image's workdir (SWE-smith: /testbed) holds the clean repo and its history, i.e.
        # the fix: its tracked files and .git go; its untracked build products (egg-info,
        # compiled extensions the environment needs) stay. Without .git, everything goes.
        res = await sandbox.exec(CLEAR_WORKDIR, timeout=self.cfg.prepare_timeout)
        if not res.ok:
            raise SandboxError(f"cannot prepare {task.task_id}: clearing the image's workdir "
                               f"failed (exit {res.exit_code}): {(res.stderr or res.stdout)[-300:]}")
        await sandbox.upload_archive(archive)
        if task.task_id not in self._image_extras:  # once per task: the image's own files
            self._image_extras[task.task_id] = await self._extras(await self.base_tree(task), sandbox)
        res = await sandbox.exec(
            "git init -q -b main && git add -A && "
            "git -c user.name=rollout -c user.email=rollout@localhost -c commit.gpgsign=false "
            "commit -q --no-verify -m 'Initial state'",
            timeout=self.cfg.prepare_timeout,
        )
        if not res.ok:
            raise SandboxError(f"cannot prepare {task.task_id}: git init in the slot failed "
                               f"(exit {res.exit_code}): {(res.stderr or res.stdout)[-300:]}")

    async def instance_files(self, task: Task) -> InstanceFiles:
        return await self._files.get(task.task_id, lambda: self._compute_files(task))

    async def _compute_files(self, task: Task) -> InstanceFiles:
        repo, head = task.data["repo"], self._head(task)
        pre = f"{head}~1"
        tree, changed = await asyncio.gather(
            self.cache.list_files(repo, pre), self.cache.changed_files(repo, pre, head))
        in_tree = set(tree)
        tests = set(node_files(task.data["FAIL_TO_PASS"] + task.data["PASS_TO_PASS"]))
        missing = sorted(tests - in_tree)
        if missing:
            raise RepoError(f"{task.task_id}: test files {missing} are not in {pre}")
        guarded = {p for p in tree if posixpath.basename(p) in GUARDED_NAMES}
        # Package inits on the way to the test files are imported by pytest during
        # collection: keep the original ones, drop planted ones.
        inits = {posixpath.join(d, "__init__.py") for d in _ancestors(tests) if d}
        restore_paths = sorted(tests | (set(changed) & in_tree) | guarded | (inits & in_tree))
        blobs = await asyncio.gather(*(self.cache.read_file(repo, pre, p) for p in restore_paths))
        files = InstanceFiles(restore=dict(zip(restore_paths, blobs)), allowed_guarded=guarded,
                              has_conftest=any(p.endswith("conftest.py") for p in guarded),
                              planted_inits=sorted(inits - in_tree),
                              src_layout=_is_src_layout(tree))
        for name, marker in _INI_MARKERS:
            if name in files.restore and (marker is None or marker in files.restore[name]):
                files.ini_file = name
                break
        return files

    async def base_tree(self, task: Task) -> dict[str, Entry]:
        """The instance's starting tree (what `prepare` uploads), from the repo cache."""
        async def compute() -> dict[str, Entry]:
            archive = await self.cache.archive(task.data["repo"], self._head(task))
            return await asyncio.to_thread(read_tree, archive)
        return await self._bases.get(task.task_id, compute)

    async def verify(self, task: Task, sandbox: Sandbox, *,
                     transcript: Sequence[dict[str, Any]] = ()) -> Verdict:
        """Grade the agent's change, never its slot: the workspace is read host-side and
        diffed against the base tree (`rollout.tasks.workspace`); that diff is scanned and
        applied to a pristine checkout in a fresh slot (the same lease, wiped: the agent's
        processes, files outside the repo, env and git state are gone); the task's test files
        are restored with hidden canaries planted; then pytest runs (see `grading`)."""
        try:
            files, base = await asyncio.gather(self.instance_files(task), self.base_tree(task))
        except RepoError as e:
            raise SandboxError(f"cannot grade {task.task_id}: {e}") from e
        f2p, p2p = task.data["FAIL_TO_PASS"], task.data["PASS_TO_PASS"]
        tests = sorted(node_files(f2p + p2p))
        export = getattr(sandbox, "archive", None)
        if export is None:
            raise GradingError("this sandbox cannot export its workspace for grading",
                               "cannot_run")
        try:
            work = await self._export(task, sandbox, export)
        except (ValueError, OSError, tarfile.TarError) as e:
            # The server refused (too large, unreadable): what the agent did to its workspace.
            return _agent_broke(task, f"the workspace cannot be read for grading: {e}")
        fresh = await self._fresh_checkout(task, sandbox)
        extras = await self._extras(base, sandbox)
        self._image_extras[task.task_id] = extras
        change = diff_trees(base, work, extras)
        diff = unified_diff(base, change)
        suspects = suspicious_changes(diff, tests)
        await self._apply(change, sandbox)
        canaries = await self._restore(files, sandbox, f2p)
        profile = self.cfg.profile(task.data["repo"])
        timeout = profile.test_timeout or self.cfg.test_timeout
        async with self._grading_bound(sandbox):
            try:
                verdict = await self._grade_once(task, tests, files, profile, sandbox, timeout,
                                                 canaries)
            except GradingError as e:
                if e.kind != "timeout" or not self.cfg.timeout_retry_factor:
                    raise
                timeout *= self.cfg.timeout_retry_factor
                log.warning("grading %s timed out; retrying once with %.0fs", task.task_id, timeout)
                verdict = await self._grade_once(task, tests, files, profile, sandbox, timeout,
                                                 canaries)
        verdict.details.update(diff_checked=True, fresh_slot=fresh,
                               changed_files=sorted([*change.written, *change.deleted])[:50],
                               ignored_changes=dict(list(change.ignored.items())[:20]))
        if suspects:
            verdict.details["suspected_hacking"] = [
                *verdict.details.get("suspected_hacking", []), *suspects]
            if verdict.score > 0:
                verdict.details["reason"] = "suspected reward hacking: " + "; ".join(suspects)
            verdict.score = 0.0
        elif verdict.score == 0.0 and "suspected_hacking" not in verdict.details:
            why = environment_failure(verdict.details, p2p, base, diff)
            if why:
                raise GradingError(f"{task.task_id}: pass-to-pass tests fail for a reason the "
                                   f"agent did not cause ({why}); fix the task's environment",
                                   "environment")
        log.info("graded %s: score %.1f (%s)", task.task_id, verdict.score, verdict.details["reason"])
        return verdict

    async def _export(self, task: Task, sandbox: Sandbox, export: Any) -> dict[str, Entry]:
        """The workspace's files, tarred by the slot server: all of it in one archive, or
        (when the prepared slot had an image's own files beside the repo) each top-level
        entry but those, so a large virtualenv in the workdir is never shipped."""
        extras = self._image_extras.get(task.task_id, frozenset())
        list_dir = getattr(sandbox, "list_dir", None)
        if not extras or list_dir is None:
            return await asyncio.to_thread(read_tree, await export("."))
        tree: dict[str, Entry] = {}
        for e in await list_dir("."):
            name = e["name"]
            if name in extras or name in SKIPPED_TOP:
                continue
            part = await asyncio.to_thread(read_tree, await export(name))
            if e.get("type") == "dir":
                tree.update({f"{name}/{p}": entry for p, entry in part.items()})
            else:
                tree.update(part)
        return tree

    async def _fresh_checkout(self, task: Task, sandbox: Sandbox) -> bool:
        """Wipe the slot (keeping the lease) and lay the base tree out again; True when the
        slot itself was renewed, False when only the workspace could be (a sandbox without
        `refresh`: the agent's processes and files outside the workspace then remain)."""
        refresh = getattr(sandbox, "refresh", None)
        if refresh is not None:
            await refresh()
        archive = await self.cache.archive(task.data["repo"], self._head(task))
        res = await sandbox.exec(CLEAR_WORKDIR if refresh is not None else CLEAR_ALL,
                                 timeout=self.cfg.prepare_timeout)
        if not res.ok:
            raise SandboxError(f"cannot grade {task.task_id}: clearing the grading checkout "
                               f"failed (exit {res.exit_code}): {(res.stderr or res.stdout)[-300:]}")
        await sandbox.upload_archive(archive)
        return refresh is not None

    @staticmethod
    async def _extras(base: dict[str, Entry], sandbox: Sandbox) -> frozenset[str]:
        """Top-level names of the pristine checkout that are not the repo's (an image's own
        build products or virtualenv in its workdir)."""
        list_dir = getattr(sandbox, "list_dir", None)
        if list_dir is None:
            return frozenset()
        tops = {p.split("/", 1)[0] for p in base}
        return frozenset(e["name"] for e in await list_dir(".") if e["name"] not in tops)

    @staticmethod
    async def _apply(change: Change, sandbox: Sandbox) -> None:
        doomed = sorted({*change.deleted, *change.written})
        if doomed:
            await sandbox.write_file(DOOMED_LIST, "\0".join(doomed).encode())
            res = await sandbox.exec(f"xargs -0 -r rm -rf -- < {DOOMED_LIST}; rm -f {DOOMED_LIST}",
                                     timeout=60.0)
            if not res.ok:
                raise SandboxError(f"applying the agent's change failed (exit {res.exit_code}): "
                                   f"{(res.stderr or res.stdout)[-300:]}")
        if change.written:
            await sandbox.upload_archive(upload_tar(change))

    async def _grade_once(self, task: Task, tests: list[str], files: InstanceFiles,
                          profile: GradingProfile, sandbox: Sandbox, timeout: float,
                          canaries: dict[str, str]) -> Verdict:
        f2p, p2p = task.data["FAIL_TO_PASS"], task.data["PASS_TO_PASS"]
        paths = profile.paths if profile.paths is not None else (
            (".", "src") if files.src_layout else (".",))
        autoload = (profile.plugin_autoload if profile.plugin_autoload is not None
                    else self.cfg.pytest_plugin_autoload)
        run = pytest_run(tests, [*f2p, *p2p, *canaries],
                         python=profile.python or self.cfg.python, ini_file=files.ini_file,
                         allow_conftest=files.has_conftest, plugin_autoload=autoload,
                         paths=paths, env=dict(profile.env))
        await sandbox.write_file(run.spec_path, run.spec)
        result = await sandbox.exec(run.command, timeout=timeout)
        return grade(f2p, p2p, result, run.nonce, canaries)

    def _grading_bound(self, sandbox: Sandbox) -> Any:
        n = self.cfg.grading_concurrency
        if n <= 0:
            return contextlib.nullcontext()
        host = str(getattr(getattr(sandbox, "slot", None), "host_id", ""))
        if host not in self._grading_slots:
            self._grading_slots[host] = asyncio.Semaphore(n)
        return self._grading_slots[host]

    async def _restore(self, files: InstanceFiles, sandbox: Sandbox,
                       f2p: list[str]) -> dict[str, str]:
        """Undo whatever the agent did to the test files and the pytest configuration, and
        plant this run's canaries in the F2P test files (which the agent never saw); returns
        {canary node id: the status it must get}."""
        res: ExecResult = await sandbox.exec(cleanup_script(files), timeout=60.0)
        if not res.ok:
            raise SandboxError(f"pre-grading cleanup failed (exit {res.exit_code}): "
                               f"{(res.stderr or res.stdout)[-300:]}")
        restore, canaries = dict(files.restore), {}
        if self.cfg.canaries:
            for path in node_files(f2p):
                restore[path], planted = canary_plant(restore[path], path, f2p)
                canaries.update(planted)
        await asyncio.gather(*(sandbox.write_file(p, data) for p, data in restore.items()))
        return canaries


register(TaskKind("swe_smith", SweSmithEnv, load_tasks_with_report, settings=SweSmithSource))


def _agent_broke(task: Task, why: str) -> Verdict:
    """0.0 for a workspace the agent made ungradable (unreadable, too large): its doing."""
    log.info("graded %s: score 0.0 (%s)", task.task_id, why)
    return Verdict(score=0.0, details={"reason": why, "agent_caused": True,
                                       "fail_to_pass": {}, "pass_to_pass": {}})


def cleanup_script(files: InstanceFiles) -> str:
    """Shell script: make the tree writable, clear the paths to restore (and any symlinked or
    non-directory ancestors of them), and delete guarded files the original tree lacks."""
    q = shlex.quote
    lines = ["chmod -R u+w . 2>/dev/null"]
    for d in sorted(_ancestors(files.restore), key=lambda p: p.count("/")):
        lines.append(f"if [ -L {q(d)} ] || {{ [ -e {q(d)} ] && [ ! -d {q(d)} ]; }}; then rm -f -- {q(d)}; fi")
    doomed = sorted(files.restore) + files.planted_inits + [GRADE_LOG, SPEC_FILE, DOOMED_LIST]
    if doomed:
        lines.append("rm -rf -- " + " ".join(q(p) for p in doomed))
    names = " -o ".join(f"-name {q(n)}" for n in GUARDED_NAMES)
    allowed = "|".join(q(f"./{p}") for p in sorted(files.allowed_guarded))
    keep = f"{allowed}) ;; " if allowed else ""
    lines.append(
        f"find . -path ./.git -prune -o \\( {names} \\) -print | while IFS= read -r f; do "
        f'case "$f" in {keep}*) rm -rf -- "$f" ;; esac; done'
    )
    lines.append("true")
    return "\n".join(lines)


def _is_src_layout(tree: list[str]) -> bool:
    """True for a tree with `src/<pkg>/__init__.py` whose package is not also at the top."""
    src_pkgs = {p.split("/")[1] for p in tree
                if p.startswith("src/") and p.count("/") == 2 and p.endswith("/__init__.py")}
    top = {p.split("/")[0] for p in tree if p.count("/") == 1 and p.endswith("/__init__.py")}
    return bool(src_pkgs - top)


def _ancestors(paths) -> set[str]:
    """Every proper parent directory of the given relative paths ("a/b/c.py" -> a, a/b)."""
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out
