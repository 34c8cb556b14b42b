"""The agent's change as the worker computes it: a workspace tar against the base tree."""

from __future__ import annotations

import io
import tarfile

import pytest

from rollout.tasks.grading import suspicious_changes
from rollout.tasks.workspace import (Entry, TreeTooLarge, diff_trees, read_tree, unified_diff,
                                     upload_tar)


def tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = kind, link
                t.addfile(info)
    return buf.getvalue()


def test_the_change_ignores_git_and_escaping_links_and_reads_hard_links():
    work = read_tree(tar(("pkg/a.py", b"import _pytest\nx = 1\n", "file", None),
                         (".git/HEAD", b"ref: refs/heads/main\n", "file", None),
                         (".git/hooks/pre-commit", b"evil", "file", None),
                         ("pkg/b.py", b"", tarfile.LNKTYPE, "pkg/a.py"),
                         ("pkg/c.py", b"", tarfile.SYMTYPE, "/proc/self/fd/1"),
                         ("pkg/d.py", b"", tarfile.SYMTYPE, "a.py")))
    assert ".git/HEAD" not in work and work["pkg/b.py"].data == work["pkg/a.py"].data
    base = {"pkg/a.py": Entry(b"x = 1\n"), "pkg/gone.py": Entry(b"y = 2\n")}
    change = diff_trees(base, work)
    assert set(change.modified) == {"pkg/a.py"} and set(change.added) == {"pkg/b.py", "pkg/d.py"}
    assert change.deleted == ["pkg/gone.py"] and set(change.ignored) == {"pkg/c.py"}
    diff = unified_diff(base, change)
    assert any("pytest internals (pkg/a.py)" in r for r in suspicious_changes(diff))
    assert "+symlink -> a.py" in diff
    # What is uploaded is exactly what was scanned.
    assert set(read_tree(upload_tar(change))) == {"pkg/a.py", "pkg/b.py", "pkg/d.py"}


def test_a_workspace_past_the_cap_is_refused_before_it_is_read():
    with pytest.raises(TreeTooLarge):
        read_tree(tar(("big.bin", b"\0" * 4096, "file", None)), max_bytes=1024)
