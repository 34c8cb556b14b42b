"""Acceptance: what a command in one slot can and cannot touch."""

from __future__ import annotations

import os
import subprocess
import uuid

from rollout.sandbox.client import SlotServerClient
from tests.sandbox_image.conftest import RunningServer


async def test_slot_cannot_read_or_write_another_slots_files(
        client: SlotServerClient, server: RunningServer) -> None:
    await client.write_file(1, "secret.txt", b"slot-one-secret")
    other = os.path.join(server.data_dir, "slots", "1")
    r = await client.exec(0, f"""
        cat /workspace/secret.txt; echo "rc=$?"
        cat {other}/secret.txt; echo "rc=$?"
        echo evil > {other}/evil.txt; echo "rc=$?"
        ls -A {server.data_dir} | wc -l
    """)
    assert "slot-one-secret" not in r.stdout
    lines = r.stdout.split()
    assert lines[:3] == ["rc=1", "rc=1", "rc=1"] or all(x != "rc=0" for x in lines[:3])
    assert lines[-1] == "0", "the server's data dir must look empty inside the sandbox"
    assert await client.read_file(1, "secret.txt") == b"slot-one-secret"
    assert [e["name"] for e in await client.list_dir(1)] == ["secret.txt"]


async def test_writes_outside_workspace_and_tmp_fail(client: SlotServerClient) -> None:
    marker = f"pwned-{uuid.uuid4().hex}"
    r = await client.exec(0, f"""
        for d in /etc /usr /root /var/tmp /; do
          touch $d/{marker} 2>/dev/null && echo "wrote $d"
        done
        touch /tmp/{marker} && echo tmp-ok
        touch /workspace/{marker} && echo ws-ok
    """)
    assert "wrote" not in r.stdout
    assert "tmp-ok" in r.stdout and "ws-ok" in r.stdout
    for d in ("/etc", "/usr", "/root", "/var/tmp", "/", "/tmp"):
        assert not os.path.exists(os.path.join(d, marker)), f"{d} written from the sandbox"
    assert any(e["name"] == marker for e in await client.list_dir(0))


async def test_host_processes_are_invisible(client: SlotServerClient,
                                            server: RunningServer) -> None:
    r = await client.exec(0, "ls /proc | grep -E '^[0-9]+$'")
    pids = {int(p) for p in r.stdout.split()}
    assert len(pids) < 10, pids  # only the sandbox's own few processes
    assert server.proc.pid not in pids or pids <= {1, 2, 3, 4, 5, 6, 7, 8}
    r = await client.exec(0, f"kill -0 {os.getpid()} 2>&1; echo rc=$?")
    assert "rc=0" not in r.stdout


async def test_no_network_when_off(client: SlotServerClient, server: RunningServer) -> None:
    probe = (
        "import socket,sys\n"
        "for addr in [('127.0.0.1', %d), ('1.1.1.1', 53)]:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try:\n"
        "        s.connect(addr); print('connected', addr)\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    ) % server.port
    await client.write_file(0, "probe.py", probe.encode())
    r = await client.exec(0, "python probe.py; ip -o link 2>/dev/null | wc -l")
    assert r.exit_code == 0, r.stderr
    assert "connected" not in r.stdout
    assert r.stdout.count("refused") == 2


async def test_token_is_not_readable(client: SlotServerClient, server: RunningServer) -> None:
    half = len(server.token) // 2
    # The token is searched for in halves so the command line itself never contains it.
    r = await client.exec(0, f"""
        env; cat {server.token_file}; cat /proc/*/environ 2>/dev/null
        A='{server.token[:half]}'; B='{server.token[half:]}'
        grep -rlsF "$A$B" /var/tmp /tmp /workspace /proc/1/environ 2>/dev/null && echo FOUND
    """)
    assert server.token not in r.stdout and server.token not in r.stderr
    assert "FOUND" not in r.stdout
    assert "SLOT_SERVER_TOKEN" not in r.stdout


async def test_default_environment_is_small(client: SlotServerClient) -> None:
    r = await client.exec(0, "env | cut -d= -f1 | sort")
    names = set(r.stdout.split())
    assert {"PATH", "HOME", "LANG"} <= names
    assert names <= {"PATH", "HOME", "LANG", "TERM", "TMPDIR", "USER", "PWD", "SHLVL",
                     "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                     "GIT_COMMITTER_EMAIL", "_"}


async def test_git_and_project_python_work_in_a_slot(client: SlotServerClient) -> None:
    r = await client.exec(0, """
        set -e
        git init -q repo && cd repo
        echo 'def f(): return 1' > m.py
        echo 'from m import f\ndef test_f(): assert f() == 1' > test_m.py
        git add -A && git commit -qm init
        echo 'def f(): return 2' > m.py
        git diff --stat
        python -m pytest -q -p no:cacheprovider 2>&1 | tail -1
    """, timeout=120)
    assert r.exit_code == 0, r.stderr + r.stdout
    assert "m.py" in r.stdout and "1 failed" in r.stdout


# Docker's default capability set for a container's root: CHOWN DAC_OVERRIDE FOWNER FSETID
# KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
DOCKER_CAPS = "00000000a80425fb"


async def test_only_dockers_capabilities_in_the_slots_own_user_namespace_and_no_remount(
        client: SlotServerClient) -> None:
    r = await client.exec(0, "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status; "
                             "cat /proc/self/uid_map; id -u; mount -o remount,rw / 2>&1; "
                             "touch /etc/remount-probe 2>&1; echo rc=$?")
    assert f"CapEff:\t{DOCKER_CAPS}" in r.stdout and f"CapBnd:\t{DOCKER_CAPS}" in r.stdout
    assert "NoNewPrivs:\t1" in r.stdout
    # uid 0 inside is the unprivileged uid_base outside: the capabilities are the user
    # namespace's, never the host's.
    health = await client.health()
    assert health["containers"] is True
    base = health["uid_base"]
    assert base and base > 0
    assert r.stdout.split("\n")[3].split() == ["0", str(base), "65536"]
    assert "\n0\n" in r.stdout
    assert "rc=0" not in r.stdout
    assert not os.path.exists("/etc/remount-probe")


async def test_commands_cannot_reach_the_servers_terminal(tmp_path) -> None:
    """A server started from an interactive shell has a controlling terminal; its commands
    (own process group, not own session) must still be unable to open /dev/tty."""
    import contextlib
    import json
    import pty
    import select
    import secrets
    import signal
    import subprocess
    import sys

    import aiohttp

    from tests.sandbox_image.conftest import PROJECT_ROOT, READY, stop

    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    master, terminal = pty.openpty()
    server = (f"{sys.executable} -m sandbox_image --data-dir {tmp_path / 'data'} "
              f"--token-file {tmp_path / 'token'} --port 0 --slots 1 --isolation required "
              "--exit-with-parent")
    # sh leads a session whose controlling terminal is the pty; the server is its child,
    # as under an interactive shell (`; exit` keeps sh from exec'ing into the server).
    proc = subprocess.Popen(["setsid", "--ctty", "sh", "-c", server + "; exit $?"],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": PROJECT_ROOT}, text=True)
    os.close(terminal)
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY), line
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, json.loads(line[len(READY):])["url"], token)
            r = await client.exec(0, "echo injected > /dev/tty; echo rc=$?")
        assert "rc=0" not in r.stdout, r
        # The reply comes after the command ended: anything it wrote is in the pty already.
        ready, _, _ = select.select([master], [], [], 0)
        seen = os.read(master, 4096) if ready else b""
        assert b"injected" not in seen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # sh and the server (one process group)
        stop(proc)
        os.close(master)


def test_exposed_dirs_under_tmp_are_read_only_and_masks_still_win(tmp_path) -> None:
    """A virtualenv under /tmp must exist inside the sandbox (the private /tmp hid it, and every
    grading command failed with `python: not found`); an exposed tree never shows a mask."""
    from sandbox_image.isolation import Bubblewrap

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "tool").write_text("#!/bin/sh\necho from-the-venv\n")
    (venv / "bin" / "tool").chmod(0o755)
    secret = venv / "secret"
    secret.mkdir()
    (secret / "key").write_text("hunter2")
    ws = tmp_path / "ws"
    ws.mkdir()
    cmd = f"{venv}/bin/tool; cat {secret}/key; touch {venv}/w 2>/dev/null || echo read-only"
    shown = Bubblewrap("bwrap", network=False, hide=[str(secret)], expose=[str(venv / "bin" / "tool")])
    assert shown.exposed == [str(venv)]  # an interpreter path means its prefix
    out = subprocess.run(shown.argv(str(ws), "/tmp/ws", "/tmp/ws", cmd), capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.split() == ["from-the-venv", "read-only"], out.stderr
    hidden = Bubblewrap("bwrap", network=False, hide=[])
    out = subprocess.run(hidden.argv(str(ws), "/tmp/ws", "/tmp/ws", cmd), capture_output=True,
                         text=True, timeout=30)
    assert "from-the-venv" not in out.stdout
