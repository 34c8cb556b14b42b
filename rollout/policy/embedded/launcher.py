"""Start and stop the embedded policy server as a subprocess (what launch.py uses).

    server = EmbeddedServerProcess(cache_dir=None, max_batch_size=8)
    base_url = server.start(timeout=600)     # http://127.0.0.1:<port>; blocks until healthy
    ...                                      # point an OpenAI-completions client at base_url
    server.stop()                            # idempotent

Guarantees: `start` returns only once /health answers, or raises `RuntimeError` with the tail
of the server log (and leaves no process behind) when the server exits or the deadline
passes. The server runs in its own process group and exits if this process dies; `stop` sends
SIGTERM, escalates to SIGKILL after `grace` seconds, and reaps the group. An atexit hook stops
any server still running when the interpreter exits. `stop` removes the launcher's temp dir
(ready file, and the log unless `log_file` was given).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from rollout.retry import NotReady, WaitTimeout, wait_until_blocking

log = logging.getLogger(__name__)

_LIVE: set[EmbeddedServerProcess] = set()
# Health checks go straight to the (local) server, never through an http_proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmbeddedServerProcess:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_dir: str | Path | None = None,
        max_batch_size: int = 8,
        max_context: int | None = None,
        threads: int | None = None,
        model_name: str | None = None,
        log_file: str | Path | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="embedded-policy-"))
        self.ready_file = self._workdir / "ready.json"
        self.log_file = Path(log_file) if log_file else self._workdir / "server.log"
        self.cmd = [python, "-m", "rollout.policy.embedded", "--host", host, "--port", str(port),
                    "--ready-file", str(self.ready_file), "--max-batch-size", str(max_batch_size),
                    "--exit-with-parent"]  # fmt: skip
        if cache_dir is not None:
            self.cmd += ["--cache-dir", str(cache_dir)]
        if max_context is not None:
            self.cmd += ["--max-context", str(max_context)]
        if threads is not None:
            self.cmd += ["--threads", str(threads)]
        if model_name is not None:
            self.cmd += ["--model-name", model_name]
        self.max_batch_size = max_batch_size
        self.env = {**os.environ, **(env or {})}
        # The child must import this package even when launched from another directory.
        root = str(Path(__file__).resolve().parents[3])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH")) if p)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url: str | None = None

    def start(self, timeout: float = 600.0) -> str:
        """Start the server and wait until it is healthy; return its base URL (no /v1)."""
        if self.proc is not None:
            raise RuntimeError("this embedded server was already started")
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        _LIVE.add(self)
        log.info("starting embedded policy server (pid %d, log %s)", self.proc.pid, self.log_file)
        proc = self.proc

        def healthy() -> str:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the embedded policy server exited with code {proc.returncode} before "
                    f"it was ready; its log ends with:\n{self.log_tail()}"
                )
            url = self._ready_url()
            if not (url and _healthy(url)):
                raise NotReady("no ready file yet" if not url else f"{url}/health does not answer")
            return url

        try:
            try:
                url = wait_until_blocking(healthy, what="the embedded policy server",
                                          timeout=timeout, interval=0.1)
            except WaitTimeout:
                raise RuntimeError(
                    f"the embedded policy server was not ready within {timeout:.0f} s "
                    f"(first start converts the model, ~20 s); log tail:\n{self.log_tail()}"
                ) from None
            self.base_url = url
            log.info("embedded policy server ready at %s", url)
            return url
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server and reap it. Idempotent; safe if it already died."""
        proc = self.proc
        _LIVE.discard(self)
        if proc is None or proc.returncode is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                log.warning("embedded policy server did not exit on %s", sig.name)
        # Anything else left in its process group goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # The ready file and (unless log_file was given) the log live here.
        shutil.rmtree(self._workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ready_url(self) -> str | None:
        try:
            return str(json.loads(self.ready_file.read_text())["base_url"])
        except (OSError, ValueError, KeyError):
            return None

    def __enter__(self) -> EmbeddedServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(base_url: str) -> bool:
    try:
        with _DIRECT.open(f"{base_url}/health", timeout=2.0) as resp:
            return resp.status == 200
    except OSError:
        return False


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=3.0)
