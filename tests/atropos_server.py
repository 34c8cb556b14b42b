"""The real Atropos API server (atroposlib's `run-api`) and a minimal test trainer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AtroposAPI:
    """One `run-api` process on loopback. `restart()` keeps the port (state is lost)."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        exe = Path(sys.executable).with_name("run-api")
        cmd = [str(exe) if exe.exists() else "run-api", "--host", "127.0.0.1",
               "--port", str(self.port)]
        out = open(self.log_dir / "run-api.log", "ab") if self.log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"run-api exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError("run-api did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class TestTrainer:
    """Registers like a trainer and pulls /batch like one."""

    __test__ = False

    def __init__(self, url: str, batch_size: int, max_token_len: int = 4096) -> None:
        self.url = url
        self.batch_size = batch_size
        self.max_token_len = max_token_len
        self.batches: list[list[dict]] = []

    def register(self) -> None:
        r = requests.post(self.url + "/register", json={
            "wandb_group": "test", "wandb_project": "test", "batch_size": self.batch_size,
            "max_token_len": self.max_token_len, "checkpoint_dir": "/tmp/ckpt",
            "save_checkpoint_interval": 1000, "starting_step": 0, "num_steps": 1000,
        }, timeout=10)
        r.raise_for_status()

    def start(self) -> None:
        """Register, then pull once: the API counts the trainer as started (envs may register)."""
        self.register()
        self.pull()

    def pull(self) -> list[dict] | None:
        r = requests.get(self.url + "/batch", timeout=10)
        r.raise_for_status()
        batch = r.json().get("batch")
        if batch:
            self.batches.append(batch)
        return batch

    def groups(self) -> list[dict]:
        return [g for b in self.batches for g in b]
