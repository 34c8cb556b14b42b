"""One fake Modal sandbox: `python -m tests.fake_modal._supervisor <sandbox-id>`.

What a Modal worker does for a sandbox, on this machine:
- the entrypoint runs in its own session, its own network namespace (only `lo`: nothing
  else can reach its ports, and it has no network) and its own mount namespace with a
  private /tmp (the image's own files under /tmp are bound back in) and the image's
  /usr/local/bin (its `python`). No pid namespace: the slot server names its cgroups by
  pid, and cgroups here are the host's (on Modal each sandbox has its own); when the
  sandbox ends its entrypoint's process group is killed, and if this process itself dies
  (even by SIGKILL) the kernel kills the entrypoint (its parent-death signal), so a sandbox
  never outlives its supervisor;
- each requested port is reachable only through a tunnel: a listening socket this process
  opened on the host's loopback before it left the host's network namespace, forwarding
  each connection to the port inside;
- it ends the sandbox on terminate (SIGTERM to this process), when the entrypoint exits,
  `timeout` seconds after create(), or after `idle_timeout` seconds without tunnel traffic,
  exec or filesystem calls; the exit record says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from tests.fake_modal import _control

CLONE_NEWNET = 0x40000000
SESSION_MARKER = "ROLLOUT_TEST_SESSION"  # tests/conftest.py's MARKER

# Runs inside the new mount namespace, before the entrypoint: a private /tmp holding the
# image's own paths under /tmp (a fresh tmpfs is filled on a staging dir, then moved onto
# /tmp: binds made before the move still see the host's /tmp).
_SETUP = r'''
set -e
R="$FAKE_MODAL_ROOT"
mount -t tmpfs -o mode=1777 tmpfs "$R"
IFS=:
for p in $FAKE_MODAL_BINDS; do
  [ -n "$p" ] || continue
  t="$R${p#/tmp}"
  if [ -d "$p" ]; then mkdir -p "$t"; else mkdir -p "${t%/*}"; : > "$t"; fi
  mount --bind "$p" "$t"
done
unset IFS FAKE_MODAL_BINDS FAKE_MODAL_ROOT
mount --bind "$FAKE_MODAL_IMAGE_BIN" /usr/local/bin
unset FAKE_MODAL_IMAGE_BIN
mount --move "$R" /tmp
mkdir -p "$FAKE_MODAL_WORKDIR"; cd "$FAKE_MODAL_WORKDIR"; unset FAKE_MODAL_WORKDIR
printf ready > "/proc/self/fd/$FAKE_MODAL_READY_FD"
eval "exec $FAKE_MODAL_READY_FD>&-"; unset FAKE_MODAL_READY_FD
exec "$@"
'''


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


class Supervisor:
    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id
        self.spec = _control.read_json(_control.sandbox_path(sandbox_id, ".json"))
        self.stop_reason: str | None = None
        self.stopped = asyncio.Event()
        self.last_activity = time.time()
        self.proc: asyncio.subprocess.Process | None = None

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped.set()

    def _activity(self) -> float:
        try:
            touched = _control.sandbox_path(self.id, ".activity").stat().st_mtime
        except FileNotFoundError:
            touched = 0.0
        return max(self.last_activity, touched)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.last_activity = time.time()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _tunnel(self, port: int):  # noqa: ANN202
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.last_activity = time.time()
            # A numeric address and a non-blocking connect: no resolver thread per connection.
            inner = socket.socket()
            inner.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(inner, ("127.0.0.1", port))
                inner_r, inner_w = await asyncio.open_connection(sock=inner)
            except OSError:
                inner.close()
                writer.close()  # nothing listens inside yet: the client sees a reset
                return
            await asyncio.gather(self._pipe(reader, inner_w), self._pipe(inner_r, writer))
        return handle

    async def run(self) -> int:
        spec = self.spec
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop, "terminated")
        ports = [*spec["encrypted_ports"], *spec["unencrypted_ports"]]
        listeners = {}
        for port in ports:  # on the host's loopback: opened before leaving its namespace
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            listeners[port] = s
        # Waiting for a worker (scheduling), then the container's cold start.
        wait = spec.get("schedule_delay", 0.0) + spec["start_delay"]
        if wait:
            try:
                await asyncio.wait_for(self.stopped.wait(), wait)
            except asyncio.TimeoutError:
                pass
        if not self.stopped.is_set():
            _unshare(CLONE_NEWNET)
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            base = _control.sandbox_path(self.id, "")
            os.makedirs(f"{base}.root", exist_ok=True)
            env = {**spec["env"], "FAKE_MODAL_BINDS": ":".join(spec["binds"]),
                   "FAKE_MODAL_ROOT": f"{base}.root",
                   "FAKE_MODAL_IMAGE_BIN": f"{base}.bin",
                   "FAKE_MODAL_WORKDIR": spec["workdir"] or "/"}
            # The test session's marker (tests/conftest.py), so its end-of-session check
            # finds the sandbox's processes too; the sandbox's own env does not carry it.
            if SESSION_MARKER in os.environ:
                env[SESSION_MARKER] = os.environ[SESSION_MARKER]
            ready_r, ready_w = os.pipe()
            env["FAKE_MODAL_READY_FD"] = str(ready_w)
            with open(f"{base}.stdout", "wb") as out, open(f"{base}.stderr", "wb") as err:
                self.proc = await asyncio.create_subprocess_exec(
                    "setpriv", "--pdeathsig", "KILL",
                    "unshare", "--mount", "--propagation", "private",
                    "sh", "-c", _SETUP, "sh", *spec["args"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                    start_new_session=True, pass_fds=(ready_w,))
            os.close(ready_w)
            # Running (tunnels, exec, files) only once its private /tmp is in place.
            ready = await asyncio.to_thread(os.read, ready_r, 16)
            os.close(ready_r)
            servers = [await asyncio.start_server(self._tunnel(port), sock=s)
                       for port, s in listeners.items()]
            if ready:
                _control.write_json(_control.sandbox_path(self.id, ".run.json"), {
                    "entry_pid": self.proc.pid, "started_at": time.time(),
                    "tunnels": {str(p): ["127.0.0.1", s.getsockname()[1]]
                                for p, s in listeners.items()}})
            exited = asyncio.ensure_future(self.proc.wait())
            exited.add_done_callback(lambda _: self._stop("exited"))
            await self._watch()
            with contextlib.suppress(ProcessLookupError):  # the entrypoint's whole group
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            for server in servers:
                server.close()
        code = self.proc.returncode if self.proc is not None else -signal.SIGKILL
        if self.stop_reason != "exited":
            code = -signal.SIGKILL
        _control.write_json(_control.sandbox_path(self.id, ".exit.json"),
                            {"returncode": code, "reason": self.stop_reason, "at": time.time()})
        return 0

    async def _watch(self) -> None:
        spec = self.spec
        deadline = spec["created_at"] + spec["timeout"] if spec["timeout"] else None
        while not self.stopped.is_set():
            now = time.time()
            if deadline is not None and now >= deadline:
                self._stop("timeout")
                break
            idle = spec["idle_timeout"]
            if idle and now - self._activity() >= idle:
                self._stop("idle_timeout")
                break
            wake = min(0.1, deadline - now) if deadline is not None else 0.1
            try:
                await asyncio.wait_for(self.stopped.wait(), max(wake, 0.0))
            except asyncio.TimeoutError:
                pass


def main() -> int:
    # Watch the entrypoint with a pidfd rather than asyncio's default thread per child.
    loop = asyncio.new_event_loop()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    try:
        return loop.run_until_complete(Supervisor(sys.argv[1]).run())
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
