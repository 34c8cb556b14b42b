"""The agent's true change, computed on the worker: its workspace's files against the base tree.

Nothing here runs inside a slot. The workspace comes out as the slot server's own tar of it
(read host-side, symlinks not followed); the base tree is the instance's archive from the
repo cache. Their difference (`Change`) is what the reward-hacking scan reads *and* what is
applied to the pristine checkout that gets graded, so hiding something from the scan (by
rewriting the slot's git history, say) also keeps it out of grading. `.git/` is never part
of it: the slot's git state does not reach grading at all.
"""

from __future__ import annotations

import difflib
import io
import posixpath
import tarfile
from dataclasses import dataclass, field

SKIPPED_TOP = frozenset({".git"})


@dataclass(frozen=True)
class Entry:
    """One file of a tree: a regular file's bytes (and whether it is executable) or a
    symlink's target."""

    data: bytes
    executable: bool = False
    link: str | None = None


MAX_TREE_BYTES = 256 << 20


class TreeTooLarge(ValueError):
    """A workspace whose files add up to more than a grading checkout takes."""


def read_tree(archive: bytes, max_bytes: int = MAX_TREE_BYTES) -> dict[str, Entry]:
    """Files and symlinks of a tar(.gz), by relative path; `.git/` and directories left out.
    Raises `TreeTooLarge` past `max_bytes` of file contents (checked before reading them)."""
    out: dict[str, Entry] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for m in tar:
            name = m.name.removeprefix("./").strip("/")
            if not name or name.split("/", 1)[0] in SKIPPED_TOP:
                continue
            if m.issym():
                out[name] = Entry(b"", link=m.linkname)
            elif m.isfile() or m.islnk():  # a hard link reads as the file it links
                f = tar.extractfile(m)
                data = f.read(max_bytes - total + 1) if f else b""
                total += len(data)
                if total > max_bytes:
                    raise TreeTooLarge(f"the workspace holds more than {max_bytes >> 20} MiB "
                                       "of files")
                out[name] = Entry(data, executable=bool(m.mode & 0o100))
    return out


@dataclass
class Change:
    """The workspace against the base tree. `ignored`: paths left out of what is graded
    (see `diff_trees`), with why."""

    added: dict[str, Entry] = field(default_factory=dict)
    modified: dict[str, Entry] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def written(self) -> dict[str, Entry]:
        return {**self.added, **self.modified}

    def empty(self) -> bool:
        return not (self.added or self.modified or self.deleted)


def diff_trees(base: dict[str, Entry], work: dict[str, Entry],
               extras: frozenset[str] = frozenset()) -> Change:
    """What the agent changed. `extras`: top-level names the prepared slot had beyond the
    base tree (an image's build products or virtualenv in its workdir): the grading slot has
    its own pristine copy, so the agent's version of them is never carried over."""
    ch = Change()
    for path, entry in work.items():
        top = path.split("/", 1)[0]
        if path not in base and top in extras:
            ch.ignored[path] = "outside the repo (the image's own files)"
        elif entry.link is not None and _escapes(path, entry.link):
            ch.ignored[path] = f"a symlink out of the workspace ({entry.link})"
        elif path not in base:
            ch.added[path] = entry
        elif base[path] != entry:
            ch.modified[path] = entry
    ch.deleted = sorted(p for p in base if p not in work)
    return ch


def _escapes(path: str, target: str) -> bool:
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return target.startswith("/") or joined == ".." or joined.startswith("../")


def _text(entry: Entry | None) -> list[str] | None:
    if entry is None:
        return []
    if entry.link is not None:
        return [f"symlink -> {entry.link}\n"]
    try:
        return entry.data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def unified_diff(base: dict[str, Entry], change: Change) -> str:
    """A git-style unified diff of `change` (binary files as a one-line note, with their
    printable text as added lines so the scan still reads them)."""
    parts: list[str] = []
    for path in sorted([*change.written, *change.deleted]):
        old, new = base.get(path), change.written.get(path)
        a, b = _text(old), _text(new)
        if a is None or b is None:
            raw = new.data if new is not None else b""
            printable = raw.decode("latin-1").splitlines()
            parts.append(f"diff --git a/{path} b/{path}\nBinary files differ\n--- a/{path}\n"
                         f"+++ b/{path}\n" + "".join(f"+{s}\n" for s in printable))
            continue
        lines = difflib.unified_diff(a, b, f"a/{path}", f"b/{path}", lineterm="\n")
        body = "".join(s if s.endswith("\n") else s + "\n" for s in lines)
        parts.append(f"diff --git a/{path} b/{path}\n{body}")
    return "".join(parts)


def upload_tar(change: Change) -> bytes:
    """A tar.gz of the files to write into the grading checkout (regular files 0644/0755,
    symlinks as they were; the slot server refuses links that leave the workspace)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for path, entry in sorted(change.written.items()):
            info = tarfile.TarInfo(path)
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            else:
                info.size, info.mode = len(entry.data), 0o755 if entry.executable else 0o644
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()
