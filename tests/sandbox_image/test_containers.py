"""Slots are containers (sandbox_image/container.py), proven against a real slot server:
root inside is an unprivileged uid outside, /proc/sys cannot be written, nothing from a
request's or an image's environment reaches a host process, processes live until the
slot's reset, each slot has its own loopback, and seccomp refuses new namespaces."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from rollout.sandbox.client import SlotServerClient
from rollout.types import SandboxError

from .conftest import RunningServer, running_server

# Written back exactly as read (the machine is shared with the test run itself).
SYSCTLS = [name for name in ("kernel/core_uses_pid", "kernel/core_pattern",
                             "vm/overcommit_memory", "kernel/modprobe", "kernel/hung_task_timeout_secs")
           if os.path.exists(f"/proc/sys/{name}")]

@pytest.fixture(scope="module")
def preload_server(preload: tuple[str, str]) -> Iterator[RunningServer]:
    """A server whose image label `poisoned` (the host view) carries LD_PRELOAD in its Env,
    as an image config's Env would."""
    so, _ = preload
    images = json.dumps({"poisoned": {"source": "host", "env": {
        "LD_PRELOAD": so, "LD_LIBRARY_PATH": os.path.dirname(so)}}})
    yield from running_server("slot-preload-", "--slots", "2", "--isolation", "required",
                              "--images", images)


async def test_slot_root_is_an_unprivileged_uid_outside(client: SlotServerClient,
                                                        server: RunningServer) -> None:
    r = await client.exec(0, "id -u; echo made-inside > owned-probe; mkdir owned-dir")
    assert r.ok and r.stdout == "0\n", r.stderr
    base = (await client.health())["uid_base"]
    assert base >= 1000
    # The slot disks are mounted in the server's private mount namespace: look through it.
    data = f"/proc/{server.proc.pid}/root{server.data_dir}"
    found = glob.glob(os.path.join(data, "**", "owned-probe"), recursive=True)
    assert len(found) == 1
    for path in (found[0], os.path.join(os.path.dirname(found[0]), "owned-dir")):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (base, base)
    # What the server writes for the slot belongs to the slot's root too.
    await client.write_file(0, "deep/er/from-server.txt", b"x")
    made = os.path.join(os.path.dirname(found[0]), "deep", "er", "from-server.txt")
    assert os.stat(made).st_uid == base
    assert os.stat(os.path.dirname(made)).st_uid == base
    r = await client.exec(0, "echo appended >> deep/er/from-server.txt && cat deep/er/from-server.txt")
    assert r.ok and r.stdout == "xappended\n", r.stderr


async def test_proc_sys_cannot_be_written_from_a_command_or_the_python_tool(
        client: SlotServerClient) -> None:
    for name in SYSCTLS:
        host_value = Path("/proc/sys", name).read_text()
        probe = f"v=$(cat /proc/sys/{name}) && printf '%s\\n' \"$v\" > /proc/sys/{name}; echo rc=$?"
        r = await client.exec(0, probe)
        assert "rc=0" not in r.stdout, (name, r.stdout, r.stderr)
        assert Path("/proc/sys", name).read_text() == host_value
    code = ("import os\n"
            "try:\n"
            "    fd = os.open('/proc/sys/kernel/core_uses_pid', os.O_WRONLY)\n"
            "    print('opened')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n")
    result = await client.python(0, code)
    assert "refused" in result.stdout and "opened" not in result.stdout, result


async def test_ld_preload_from_a_request_never_loads_in_a_host_process(
        client: SlotServerClient, preload: tuple[str, str]) -> None:
    so, marker = preload
    env = {"LD_PRELOAD": so, "LD_LIBRARY_PATH": os.path.dirname(so)}
    r = await client.exec(0, "echo $LD_PRELOAD", env=env)
    assert r.stdout.strip() == so  # applied inside the slot, where that path does not exist
    await client.python(0, "print(1)")
    assert not os.path.exists(marker), Path(marker).read_text()


async def test_ld_preload_from_an_image_env_never_loads_in_a_host_process(
        preload_server: RunningServer, preload: tuple[str, str]) -> None:
    so, marker = preload
    async with aiohttp.ClientSession() as session:
        c = SlotServerClient(session, preload_server.url, preload_server.token)
        await c.reset(0, image="poisoned")
        r = await c.exec(0, "echo $LD_PRELOAD")
        assert r.stdout.strip() == so
        await c.reset(0)
    assert not os.path.exists(marker), Path(marker).read_text()


async def test_a_background_server_answers_later_commands_and_dies_at_reset(
        client: SlotServerClient) -> None:
    tag = "slot-bg-server-8123"
    start = (f"mkdir -p {tag} && cd {tag} && echo served > index.html && "
             "nohup python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 &")
    r = await client.exec(0, start)
    assert r.ok, r.stderr
    fetch = ("python3 - <<'EOF'\n"
             "import time, urllib.request\n"
             "for _ in range(400):\n"
             "    try:\n"
             "        print(urllib.request.urlopen('http://127.0.0.1:8123/index.html').read().decode().strip())\n"
             "        break\n"
             "    except OSError:\n"
             "        time.sleep(0.05)\n"
             "else:\n"
             "    print('unreachable')\n"
             "EOF")
    r = await client.exec(0, fetch, timeout=60)
    assert r.stdout.strip() == "served", r.stderr
    assert _processes_with(tag) or _processes_with("http.server 8123")
    await client.reset(0)
    assert not _processes_with("http.server 8123")
    r = await client.exec(0, "python3 -c \"import urllib.request; "
                             "urllib.request.urlopen('http://127.0.0.1:8123/')\" 2>&1 | tail -1")
    assert "Connection refused" in r.stdout


async def test_two_slots_listen_on_the_same_port(client: SlotServerClient) -> None:
    for slot in (1, 2):
        r = await client.exec(slot, f"echo slot-{slot} > index.html && nohup python3 -m "
                                    "http.server 8080 --bind 127.0.0.1 >server.log 2>&1 &")
        assert r.ok, r.stderr
    for slot in (1, 2):
        r = await client.exec(slot, "python3 - <<'EOF'\n"
                                    "import time, urllib.request\n"
                                    "for _ in range(400):\n"
                                    "    try:\n"
                                    "        print(urllib.request.urlopen('http://127.0.0.1:8080/index.html').read().decode().strip())\n"
                                    "        break\n"
                                    "    except OSError:\n"
                                    "        time.sleep(0.05)\n"
                                    "EOF", timeout=60)
        assert r.stdout.strip() == f"slot-{slot}", (r.stdout, r.stderr)


async def test_seccomp_refuses_new_namespaces_and_mounts(client: SlotServerClient) -> None:
    r = await client.exec(0, "unshare -U true; echo u=$?; unshare -n true; echo n=$?; "
                             "grep Seccomp: /proc/self/status")
    assert "u=0" not in r.stdout and "n=0" not in r.stdout, r.stdout
    assert "Seccomp:\t2" in r.stdout


async def test_a_slot_whose_init_was_killed_gets_its_container_back(
        client: SlotServerClient) -> None:
    r = await client.exec(3, "echo kept > kept.txt; kill -9 -1; sleep 5")
    assert r.exit_code != 0 or "kept" not in r.stdout
    r = await client.exec(3, "cat kept.txt; echo $$")
    assert r.ok and r.stdout.startswith("kept\n"), (r.stdout, r.stderr)


def _processes_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmd:
                pids.append(int(entry))
    return pids


async def test_a_released_slot_refuses_its_old_lease(tmp_path: Path) -> None:
    """The server knows which lease holds each slot: the first request of a lease makes it
    the slot's, the release's reset ends it, and a request with an ended lease (a holder
    whose trajectory is over, a request still in flight at the release) is refused; with
    --leases required so is a request without one."""
    gen = running_server("slot-lease-", "--slots", "1", "--isolation", "required",
                         "--leases", "required")
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            first, second = "a" * 32, "b" * 32
            assert (await c.exec(0, "echo mine", lease=first)).stdout == "mine\n"
            with pytest.raises(SandboxError, match="requires the slot's lease"):
                await c.exec(0, "echo no-lease")
            with pytest.raises(SandboxError, match="requires the slot's lease"):
                await c.reset(0)  # a leased slot is reset by its holder
            await c.write_file(0, "f", b"x", lease=first)
            await c.reset(0, lease=first)  # the release: ends the lease
            with pytest.raises(SandboxError, match="not leased by this lease"):
                await c.exec(0, "echo stale", lease=first)
            with pytest.raises(SandboxError, match="not leased by this lease"):
                await c.read_file(0, "f", lease=first)
            assert (await c.exec(0, "echo new-holder", lease=second)).stdout == "new-holder\n"
            with pytest.raises(SandboxError, match="not leased by this lease"):
                await c.python(0, "print(1)", lease=first)
            with pytest.raises(SandboxError, match="not leased by this lease"):
                await c.reset(0, lease=first)
            assert (await c.exec(0, "cat f 2>&1; echo ok", lease=second)).stdout.endswith("ok\n")
    finally:
        next(gen, None)


def _host_address() -> str:
    """This host's address on its outward interface (not loopback)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outward interface
        return s.getsockname()[0]


_FETCH = ("python3 - <<'EOF'\n"
          "import urllib.request\n"
          "for url in {urls!r}:\n"
          "    try:\n"
          "        print(url, urllib.request.urlopen(url, timeout=5).read().decode().strip())\n"
          "    except Exception as e:\n"
          "        print(url, 'refused', type(e).__name__)\n"
          "EOF")


async def test_network_on_gives_each_slot_its_own_egress_not_the_hosts_loopback(
        tmp_path: Path) -> None:
    """With sandbox.network=true a slot reaches the outside through its own user-mode
    network (NAT), but neither the host's loopback (where the slot server listens) nor the
    host's namespace: two slots still bind the same port."""
    import http.server
    import threading

    (tmp_path / "index.html").write_text("from-the-host\n")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    gen = running_server("slot-net-", "--slots", "2", "--isolation", "required",
                         "--network", "on", "--containers", "on")
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            outside = f"http://{_host_address()}:{port}/index.html"
            host_loopback = f"http://10.0.2.2:{port}/index.html"
            server = f"http://127.0.0.1:{srv.port}/livez"
            r = await c.exec(0, _FETCH.format(urls=[outside, host_loopback, server]),
                             timeout=60)
            lines = r.stdout.splitlines()
            assert lines[0] == f"{outside} from-the-host", r
            assert lines[1].startswith(f"{host_loopback} refused"), r
            assert lines[2].startswith(f"{server} refused"), r
            r = await c.exec(0, "cat /proc/net/dev | grep -c tap0; ip -4 -o addr 2>/dev/null "
                                "| grep -c tap0 || true")
            assert r.stdout.split()[0] == "1", r
    finally:
        next(gen, None)
        httpd.shutdown()


@pytest.mark.parametrize("helper", ["on", "off"])
async def test_both_ways_into_a_container_give_the_same_sandbox(helper: str) -> None:
    """The slot-enter helper and the nsenter + bwrap way in (no C compiler, old kernel)
    apply the same rules."""
    gen = running_server(f"slot-enter-{helper}-", "--slots", "1", "--isolation", "required",
                         "--enter-helper", helper, "--pids", "64")
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            r = await c.exec(0, "id -u; cat /proc/self/uid_map; grep -E 'CapEff|NoNewPrivs|"
                                "Seccomp:' /proc/self/status; echo $MINE; hostname; "
                                "echo 1 > /proc/sys/kernel/core_uses_pid || echo refused; "
                                "unshare -U true 2>/dev/null || echo no-userns; "
                                "(sleep 1000.4242 >/dev/null 2>&1 &); pwd",
                             env={"MINE": "inside"})
            lines = r.stdout.split("\n")
            assert lines[0] == "0" and lines[1].split() == ["0", "100000", "65536"], r
            assert lines[2:5] == ["CapEff:\t00000000a80425fb", "NoNewPrivs:\t1",
                                  "Seccomp:\t2"], r
            assert lines[5:9] == ["inside", "sandbox", "refused", "no-userns"], r
            r = await c.exec(0, "ps -eo args | grep -c '^sleep 1000.4242'")
            assert r.stdout.strip() == "1", r  # it outlived the command that started it
    finally:
        next(gen, None)


async def test_an_exposed_dir_of_mode_0700_is_usable_by_the_slots_root() -> None:
    """An interpreter prefix made by mkdtemp (mode 0700, owned by the host's root: CI's
    virtualenv) is shown to the slot through an idmapped mount, so its root can use it
    (read-only) though it is an unprivileged uid on the host."""
    import tempfile

    private = tempfile.mkdtemp(prefix="private-prefix-", dir="/var/tmp")  # mode 0700
    os.makedirs(os.path.join(private, "bin"))
    tool = os.path.join(private, "bin", "hello")
    Path(tool).write_text("#!/bin/sh\necho hello from a private prefix\n")
    os.chmod(tool, 0o755)
    gen = running_server("slot-expose-", "--slots", "1", "--isolation", "required",
                         "--expose", private)
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            r = await c.exec(0, f"{tool}; touch {private}/x 2>/dev/null || echo read-only")
            assert r.stdout == "hello from a private prefix\nread-only\n", r
    finally:
        next(gen, None)
        import shutil

        shutil.rmtree(private, ignore_errors=True)


def _mount_points(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split()[4] for line in f]


async def test_staging_stays_in_the_servers_namespace_and_resets_add_no_mounts() -> None:
    """Without slot disks too, what a server stages for its containers is mounted in its
    own mount namespace (a killed server leaves nothing mounted on the host), once: a
    reset neither mounts nor unmounts (bubblewrap copies the server's mounts at every
    container start, so they must not pile up)."""
    import tempfile

    private = tempfile.mkdtemp(prefix="private-prefix-", dir="/var/tmp")  # staged, idmapped
    gen = running_server("slot-stage-", "--slots", "2", "--isolation", "required",
                         "--disk-mb", "0", "--expose", private)
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            r = await c.exec(0, f"ls -d {private} && id -u")
            assert r.ok and r.stdout == f"{private}\n0\n", r
            staged = sorted({p.rsplit("/slot-stage-", 1)[1].split("/")[0]
                             for p in _mount_points(srv.proc.pid) if "/slot-stage-" in p})
            assert staged, "nothing staged: the test proves nothing"
            before = _mount_points(srv.proc.pid)
            for _ in range(3):
                await c.reset(0)
                await c.reset(1)
            assert (await c.exec(1, "id -u")).stdout == "0\n"
            assert _mount_points(srv.proc.pid) == before
        on_host = [p for p in _mount_points("self")
                   if any(f"/slot-stage-{s}" in p for s in staged)]
        assert on_host == []
    finally:
        next(gen, None)
        import shutil

        shutil.rmtree(private, ignore_errors=True)
