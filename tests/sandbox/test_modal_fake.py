"""The fake modal SDK cannot drift from the real one: every name the backend uses exists in
the installed `modal` package with the same parameters (names, kinds, defaults), and the
fake itself enforces what the backend relies on (timeout, idle_timeout, tag replacement,
terminate, list filters, the modern file API)."""

from __future__ import annotations

import inspect
import signal
import time

import modal
import modal.container_process
import modal.exception
import modal.sandbox._filesystem
import pytest

import tests.fake_modal as fake
from tests.fake_modal import _control
from tests.sandbox.modal_support import fake_modal  # noqa: F401

# (fake, real) pairs: every part of the SDK the backend or its tests call.
PAIRS = {
    "App.lookup": (fake.App.lookup, modal.App.lookup),
    "Secret.from_dict": (fake.Secret.from_dict, modal.Secret.from_dict),
    "Secret.from_name": (fake.Secret.from_name, modal.Secret.from_name),
    "Image.from_registry": (fake.Image.from_registry, modal.Image.from_registry),
    **{f"Image.{m}": (getattr(fake.Image, m), getattr(modal.Image, m))
       for m in ("pip_install", "apt_install", "run_commands", "env",
                 "add_local_python_source")},
    **{f"Sandbox.{m}": (getattr(fake.Sandbox, m), getattr(modal.Sandbox, m))
       for m in ("create", "from_id", "list", "tunnels", "exec", "terminate", "wait", "poll",
                 "detach", "set_tags", "get_tags")},
    **{f"ContainerProcess.{m}": (getattr(fake.ContainerProcess, m),
                                 getattr(modal.container_process.ContainerProcess, m))
       for m in ("wait", "poll")},
    **{f"filesystem.{m}": (getattr(fake.SandboxFilesystem, m),
                           getattr(modal.sandbox._filesystem._SandboxFilesystem, m))
       for m in ("read_bytes", "read_text", "write_bytes", "write_text", "make_directory",
                 "list_files")},
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_fake_signature_matches_the_installed_modal(name: str) -> None:
    fake_fn, real_fn = PAIRS[name]
    mine = inspect.signature(fake_fn).parameters
    real = inspect.signature(real_fn).parameters
    for pname, p in mine.items():
        assert pname in real, f"{name}: the real SDK has no parameter {pname!r}"
        r = real[pname]
        assert p.kind == r.kind, f"{name}({pname}): {p.kind} vs real {r.kind}"
        assert p.default == r.default, \
            f"{name}({pname}): default {p.default!r} vs real {r.default!r}"
    required = {n for n, p in real.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    assert required <= set(mine), f"{name}: real requires {required - set(mine)}"


def test_every_used_sdk_method_has_an_aio_form() -> None:
    for name, (fake_fn, real_fn) in PAIRS.items():
        if name.startswith(("Image.", "Secret.")):
            continue  # builders: no I/O, no .aio in the real SDK either
        if name.startswith("filesystem."):  # read from the real async implementation class
            assert inspect.iscoroutinefunction(real_fn) and hasattr(fake_fn, "aio"), name
            continue
        assert hasattr(real_fn, "aio") and hasattr(fake_fn, "aio"), name


def test_error_classes_match() -> None:
    for name in ("ResourceExhaustedError", "NotFoundError", "ConflictError", "InvalidError",
                 "ServiceError", "InternalError", "SandboxTimeoutError",
                 "SandboxTerminatedError", "ExecTimeoutError"):
        real = getattr(modal.exception, name)
        mine = getattr(fake.exception, name)
        real_bases = {b.__name__ for b in real.__mro__} & {"Error", "TimeoutError",
                                                            "InvalidError"}
        mine_bases = {b.__name__ for b in mine.__mro__} & {"Error", "TimeoutError",
                                                            "InvalidError"}
        assert mine_bases == real_bases, name


def _app() -> fake.App:
    return fake.App.lookup("fake-test", create_if_missing=True)


async def test_timeout_ends_a_sandbox_and_wait_says_so(fake_modal) -> None:  # noqa: F811
    app = await fake.App.lookup.aio("fake-test", create_if_missing=True)
    sb = await fake.Sandbox.create.aio("sleep", "600", app=app, timeout=2)
    with pytest.raises(fake.exception.SandboxTimeoutError):
        await sb.wait.aio()
    record = _control.exit_record(sb.object_id)
    spec = _control.read_json(_control.sandbox_path(sb.object_id, ".json"))
    assert record["reason"] == "timeout" and record["at"] >= spec["created_at"] + 2
    assert await sb.poll.aio() is not None


async def test_idle_timeout_counts_exec_as_activity(fake_modal) -> None:  # noqa: F811
    app = await fake.App.lookup.aio("fake-test", create_if_missing=True)
    sb = await fake.Sandbox.create.aio("sleep", "600", app=app, timeout=60, idle_timeout=2)
    await sb.tunnels.aio()  # running
    # Keep it busy for longer than idle_timeout: it must stay up.
    t0 = time.time()
    while time.time() - t0 < 3:
        p = await sb.exec.aio("true")
        await p.wait.aio()
        assert p.returncode == 0
    assert await sb.poll.aio() is None
    with pytest.raises(fake.exception.SandboxTerminatedError):
        await sb.wait.aio()
    assert _control.exit_record(sb.object_id)["reason"] == "idle_timeout"


async def test_tags_list_terminate_and_files(fake_modal) -> None:  # noqa: F811
    app = await fake.App.lookup.aio("fake-test", create_if_missing=True)
    a = await fake.Sandbox.create.aio("sleep", "600", app=app, tags={"run_id": "a", "x": "1"})
    b = await fake.Sandbox.create.aio("sleep", "600", app=app, tags={"run_id": "b"})
    await a.set_tags.aio({"run_id": "a"})  # replaces: x is gone
    assert await a.get_tags.aio() == {"run_id": "a"}
    found = [s.object_id async for s in fake.Sandbox.list.aio(app_id=app.app_id,
                                                              tags={"run_id": "a"})]
    assert found == [a.object_id]
    await a.tunnels.aio()
    await a.filesystem.make_directory.aio("/tmp/d")
    await a.filesystem.write_text.aio("hello", "/tmp/d/f")
    assert await a.filesystem.read_text.aio("/tmp/d/f") == "hello"
    p = await a.exec.aio("cat", "/tmp/d/f")
    assert await p.wait.aio() == 0 and await p.stdout.read.aio() == "hello"
    p = await b.exec.aio("cat", "/tmp/d/f")  # its own /tmp
    assert await p.wait.aio() != 0
    assert await a.terminate.aio(wait=True) is not None
    found = [s.object_id async for s in fake.Sandbox.list.aio(app_id=app.app_id)]
    assert found == [b.object_id]
    again = await fake.Sandbox.from_id.aio(b.object_id)
    await again.detach.aio()
    with pytest.raises(fake.exception.Error):
        await again.poll.aio()
    with pytest.raises(fake.exception.NotFoundError):
        await fake.Sandbox.from_id.aio("sb-missing")
    fake.Sandbox.from_id(b.object_id).terminate()  # the blocking form


async def test_a_sandbox_never_outlives_its_supervisor(fake_modal) -> None:  # noqa: F811
    """A supervisor killed outright (no SIGTERM handling) takes its entrypoint with it: no
    orphaned `python -m sandbox_image` reparented to init after a test."""
    app = await fake.App.lookup.aio("fake-test", create_if_missing=True)
    sb = await fake.Sandbox.create.aio("sleep", "600", app=app, timeout=60)
    await sb.tunnels.aio()  # running: the entrypoint exists
    entry = _control.run_record(sb.object_id)["entry_pid"]
    assert _control.start_time(entry) is not None
    assert _control.signal_supervisor(sb.object_id, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _control.start_time(entry) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _control.start_time(entry) is None, "the entrypoint outlived its supervisor"
