"""Acceptance: file endpoints stay inside the workspace; uploads are extracted safely."""

from __future__ import annotations

import io
import tarfile

import pytest

from rollout.sandbox.client import SlotRequestError, SlotServerClient


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("path", ["../x", "a/../../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd",
                                  "..", "/tmp/x", "a\x00b"])
async def test_traversal_paths_are_refused(client: SlotServerClient, path: str) -> None:
    with pytest.raises(SlotRequestError):
        await client.read_file(0, path)
    with pytest.raises(SlotRequestError):
        await client.write_file(0, path, b"pwned")
    with pytest.raises(SlotRequestError):
        await client.list_dir(0, path)
    with pytest.raises(SlotRequestError):
        await client.exec(0, "true", cwd=path)


async def test_symlink_escapes_are_refused(client: SlotServerClient) -> None:
    r = await client.exec(0, "ln -s /etc etc_link && ln -s /etc/passwd pw && mkdir d && ln -s ../../ d/up")
    assert r.ok, r.stderr
    for path in ("etc_link/passwd", "pw", "d/up/x"):
        with pytest.raises(SlotRequestError, match="outside the workspace"):
            await client.read_file(0, path)
    with pytest.raises(SlotRequestError):
        await client.write_file(0, "etc_link/pwned", b"x")
    with pytest.raises(SlotRequestError):
        await client.list_dir(0, "etc_link")
    with pytest.raises(SlotRequestError):
        await client.archive(0, "etc_link/passwd")
    # The listing shows the links themselves, not their targets.
    kinds = {e["name"]: e["type"] for e in await client.list_dir(0)}
    assert kinds["etc_link"] == "symlink" and kinds["pw"] == "symlink"


@pytest.mark.parametrize("bad", [
    [_file("../evil")],
    [_file("/abs/evil")],
    [_link("out", "/etc")],
    [_link("up", "../../..")],
    [_link("hard", "/etc/passwd", tarfile.LNKTYPE)],
    [(lambda i: (setattr(i, "type", tarfile.CHRTYPE), (i, None))[1])(tarfile.TarInfo("dev"))],
    [_file("ok.txt"), _file("../../late-evil")],
])
async def test_unsafe_archives_are_refused_and_change_nothing(
        client: SlotServerClient, bad: list) -> None:
    with pytest.raises(SlotRequestError):
        await client.upload_archive(1, _tar(*bad))
    assert await client.list_dir(1) == []


async def test_upload_refuses_garbage_and_oversized(client: SlotServerClient) -> None:
    with pytest.raises(SlotRequestError, match="tar"):
        await client.upload_archive(1, b"definitely not a tarball")
    with pytest.raises(SlotRequestError):  # the test server's file cap is 1 MiB
        await client.upload_archive(1, _tar(_file("big", b"\0" * (9 << 20))))
    assert await client.list_dir(1) == []


async def test_roundtrip_write_read_list_archive_upload(client: SlotServerClient) -> None:
    await client.write_file(0, "src/pkg/mod.py", b"print('hi')\n")
    await client.write_file(0, "/workspace/README", b"readme")  # absolute inside is fine
    assert await client.read_file(0, "src/pkg/mod.py") == b"print('hi')\n"
    assert await client.read_file(0, "README", max_bytes=4) == b"read"
    names = [e["name"] for e in await client.list_dir(0, "src/pkg")]
    assert names == ["mod.py"]
    data = await client.archive(0, ".")
    assert await client.upload_archive(2, data, path="copy") >= 3
    assert await client.read_file(2, "copy/src/pkg/mod.py") == b"print('hi')\n"
    r = await client.exec(2, "python pkg/mod.py", cwd="copy/src")
    assert r.stdout == "hi\n"
    with pytest.raises(FileNotFoundError):
        await client.read_file(0, "missing.txt")


async def test_read_over_cap_needs_max_bytes(client: SlotServerClient) -> None:
    r = await client.exec(0, "head -c 2000000 /dev/zero > big.bin")
    assert r.ok
    with pytest.raises(SlotRequestError, match="max_bytes"):
        await client.read_file(0, "big.bin")
    assert len(await client.read_file(0, "big.bin", max_bytes=1000)) == 1000


async def test_git_archive_upload_then_commit(client: SlotServerClient, tmp_path) -> None:
    """The SWE-smith preparation path: upload `git archive` output, then git init inside."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "lib.py").write_text("X = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    tarball = subprocess.run([*git, "archive", "--format=tar.gz", "HEAD"], check=True,
                             capture_output=True).stdout
    await client.upload_archive(3, tarball)
    r = await client.exec(3, "git init -q && git add -A && git commit -qm base && "
                             "echo 'X = 2' > lib.py && git diff --name-only")
    assert r.ok, r.stderr
    assert r.stdout.strip() == "lib.py"
