"""A per-host cache of SWE-smith mirror repositories (bare git repos) and their artifacts.

Guarantees:
- Each repo is fetched at most once per cache directory, even under many concurrent
  coroutines (one asyncio.Lock per repo) and several processes (an fcntl lock file per repo).
  A repo is cloned into a temporary directory and renamed into place, so a reader never sees
  a half-written repo, and a crash mid-clone leaves nothing to clean up by hand.
- Archives and file contents are read from the bare repo and memoized in memory (bounded
  LRU); concurrent requests for the same artifact share one git invocation.
- Nothing here talks to a sandbox: the slot only ever receives a plain tree (never the
  mirror's history, which holds the fix on `main`).
- A row's `repo` may be a bare mirror name (`owner__proj.abc12345`), a SWE-smith name
  (`swesmith/owner__proj.abc12345`) or any `owner/name`; it is validated (see `repo_parts`)
  and the cached mirror and its lock file are one flat file name (`mirror_name`), never a
  path the row chooses.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from rollout.tasks.loader import REPO_PREFIX

log = logging.getLogger(__name__)
T = TypeVar("T")

_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")


class RepoError(RuntimeError):
    """A mirror repo or one of its refs cannot be obtained."""


class RepoNameError(RepoError, ValueError):
    """A row's `repo` that cannot safely name a mirror (a path, `..`, odd characters)."""


def repo_parts(repo: str) -> tuple[str, ...]:
    """The validated components of a row's `repo`, the `swesmith/` prefix dropped:
    `swesmith/owner__proj.abc1` -> ("owner__proj.abc1",), `pallets/click` -> ("pallets", "click").

    Raises `RepoNameError` for an empty name, an absolute path, `..`, an empty component
    (`a//b`, a trailing `/`) or a component with characters outside [A-Za-z0-9._-].
    """
    if not isinstance(repo, str) or not repo.strip():
        raise RepoNameError(f"repo name {repo!r} is empty")
    if repo.startswith("/"):
        raise RepoNameError(f"repo name {repo!r} is an absolute path; expected owner/name")
    if ".." in repo:
        raise RepoNameError(f"repo name {repo!r} contains '..'; expected owner/name")
    rest = repo[len(REPO_PREFIX):] if repo.startswith(REPO_PREFIX) else repo
    parts = tuple(rest.split("/"))
    for part in parts:
        if not part:
            raise RepoNameError(f"repo name {repo!r} has an empty path component; "
                                f"expected owner/name")
        if part == "." or not _COMPONENT.fullmatch(part):
            raise RepoNameError(f"repo name {repo!r}: component {part!r} must be made of "
                                f"letters, digits, '.', '_' and '-' only")
    return parts


def mirror_name(repo: str) -> str:
    """The single file name of a repo's cached mirror (plus `.git`) and lock file (plus
    `.lock`): the components joined by `__`, e.g. `pallets/click` -> `pallets__click`,
    `swesmith/owner__proj.abc1` -> `owner__proj.abc1`."""
    return "__".join(repo_parts(repo))


def _source_names(repo: str) -> list[str]:
    """Relative names to look for in a source directory, most specific first:
    `owner__name`, `owner/name` (with and without the `swesmith/` owner), then `name`."""
    parts = repo_parts(repo)
    full = tuple(repo.split("/"))  # validated above: the same components, prefix kept
    out: list[str] = []
    for cand in ("__".join(parts), "__".join(full), "/".join(full), "/".join(parts), parts[-1]):
        if cand not in out:
            out.append(cand)
    return out


async def run_git(*args: str, cwd: Path | None = None, input: bytes | None = None,
                  timeout: float = 600.0) -> bytes:
    """Run git without a shell; return stdout or raise RepoError with git's message."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdin=asyncio.subprocess.PIPE if input is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise RepoError(f"git {' '.join(args[:2])} failed: {msg[-1] if msg else proc.returncode}")
    return out


class _Memo:
    """Bounded LRU of awaited results; concurrent callers of one key share one computation."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[object, asyncio.Future] = collections.OrderedDict()

    async def get(self, key: object, compute: Callable[[], Awaitable[T]]) -> T:
        fut = self._items.get(key)
        if fut is None:
            fut = asyncio.ensure_future(compute())
            self._items[key] = fut
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        try:
            return await asyncio.shield(fut)
        except Exception:
            if self._items.get(key) is fut:  # do not cache failures
                del self._items[key]
            raise


class RepoCache:
    """Bare mirror repos under `cache_dir`, fetched from the first source that has them.

    `sources` entries are tried in order. A directory is searched for `<n>.bundle`,
    `<n>.git` or `<n>` (a repo) for each name `n` of `_source_names` in turn: for
    `pallets/click`, `pallets__click`, then `pallets/click` (an owner subdirectory), then
    `click`; for `swesmith/owner__proj.abc1`, `owner__proj.abc1` first. Any other entry is a
    URL/path template containing `{repo}` (the row's repo as given, e.g. `pallets/click` or
    `swesmith/owner__proj.abc12345`) and/or `{name}` (its last component: `click`,
    `owner__proj.abc12345`).
    """

    def __init__(self, cache_dir: str | Path, sources: list[str], *, memo_size: int = 512) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.sources = list(sources)
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._ready: set[str] = set()
        self._refreshed: set[str] = set()
        self._memo = _Memo(memo_size)

    def repo_path(self, repo: str) -> Path:
        """Where the mirror of `repo` is cached (raises `RepoNameError` for a bad name)."""
        return self.cache_dir / f"{mirror_name(repo)}.git"

    def _candidates(self, repo: str) -> list[str]:
        names = _source_names(repo)
        last = repo_parts(repo)[-1]
        out = []
        for src in self.sources:
            if "{repo}" in src or "{name}" in src:
                out.append(src.replace("{repo}", repo).replace("{name}", last))
                continue
            found = self._in_directory(Path(src).expanduser(), names)
            if found is not None:
                out.append(str(found))
        return out

    @staticmethod
    def _in_directory(base: Path, names: list[str]) -> Path | None:
        """The first `<n>.bundle`, `<n>.git` or `<n>` (a git repo, bare or not) in `base`."""
        for n in names:
            for cand in (base / f"{n}.bundle", base / f"{n}.git"):
                if cand.exists():
                    return cand
            plain = base / n
            # A plain directory must be a repo: `<dir>/<owner>` is not one.
            if plain.is_dir() and ((plain / "HEAD").is_file() or (plain / ".git").exists()):
                return plain
        return None

    async def ensure_repo(self, repo: str) -> Path:
        """Return the bare repo for `repo`, cloning it once if it is not cached yet."""
        name = mirror_name(repo)
        path = self.repo_path(repo)
        if name in self._ready:
            return path
        async with self._locks[name]:
            if name not in self._ready:
                if not (path / "HEAD").exists():
                    await asyncio.to_thread(self.cache_dir.mkdir, parents=True, exist_ok=True)
                    lock_fd = await asyncio.to_thread(self._lock_file, name)
                    try:
                        if not (path / "HEAD").exists():  # another process may have won
                            await self._clone(repo, path)
                    finally:
                        os.close(lock_fd)  # closing releases the flock
                self._ready.add(name)
        return path

    def _lock_file(self, name: str) -> int:
        fd = os.open(self.cache_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    async def _clone(self, repo: str, path: Path) -> None:
        candidates = self._candidates(repo)
        if not candidates:
            raise RepoError(f"no source for repo {repo!r}; add a directory or URL template "
                            f"to task.repo_sources (tried {self.sources})")
        errors = []
        for src in candidates:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=self.cache_dir))
            try:
                await run_git("clone", "--quiet", "--mirror", "--", src, str(tmp / "repo.git"))
                os.replace(tmp / "repo.git", path)
                log.info("cached repo %s from %s", repo, src)
                return
            except (RepoError, OSError) as e:
                errors.append(f"{src}: {e}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        raise RepoError(f"could not fetch repo {repo!r}: " + "; ".join(errors))

    async def _refresh(self, repo: str) -> bool:
        """Fetch new refs into a cached mirror, at most once per repo per process."""
        name = mirror_name(repo)
        path = await self.ensure_repo(repo)
        async with self._locks[name]:
            if name in self._refreshed:
                return False
            self._refreshed.add(name)
            lock_fd = await asyncio.to_thread(self._lock_file, name)
            try:
                await run_git("fetch", "--quiet", "--prune", "origin", cwd=path)
            except RepoError as e:
                log.warning("could not refresh %s: %s", repo, e)
                return False
            finally:
                os.close(lock_fd)
        return True

    async def _git(self, repo: str, *args: str) -> bytes:
        path = await self.ensure_repo(repo)
        return await run_git(*args, cwd=path)

    async def resolve(self, repo: str, rev: str) -> str:
        """The commit id of `rev` (memoized: mirrors are immutable per instance branch)."""
        async def compute() -> str:
            args = ("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
            try:
                return (await self._git(repo, *args)).decode().strip()
            except RepoError:
                pass
            if await self._refresh(repo):  # the cached mirror may predate this instance
                try:
                    return (await self._git(repo, *args)).decode().strip()
                except RepoError:
                    pass
            raise RepoError(f"repo {repo!r} has no revision {rev!r} (checked its sources "
                            f"{self.sources}); is the dataset newer than the mirror?")
        return await self._memo.get(("rev", mirror_name(repo), rev), compute)

    async def archive(self, repo: str, rev: str) -> bytes:
        """A tar.gz of the tree at `rev` (files only, no history)."""
        commit = await self.resolve(repo, rev)
        return await self._memo.get(
            ("archive", commit),
            lambda: self._git(repo, "archive", "--format=tar.gz", commit),
        )

    async def list_files(self, repo: str, rev: str) -> list[str]:
        commit = await self.resolve(repo, rev)
        async def compute() -> list[str]:
            out = await self._git(repo, "ls-tree", "-r", "-z", "--name-only", commit)
            return [p for p in out.decode().split("\0") if p]
        return await self._memo.get(("ls", commit), compute)

    async def changed_files(self, repo: str, rev_a: str, rev_b: str) -> list[str]:
        a, b = await self.resolve(repo, rev_a), await self.resolve(repo, rev_b)
        async def compute() -> list[str]:
            out = await self._git(repo, "diff", "--name-only", "-z", "--no-renames", a, b)
            return [p for p in out.decode().split("\0") if p]
        return await self._memo.get(("diff", a, b), compute)

    async def read_file(self, repo: str, rev: str, path: str) -> bytes:
        commit = await self.resolve(repo, rev)
        return await self._memo.get(
            ("blob", commit, path), lambda: self._git(repo, "show", f"{commit}:{path}")
        )
