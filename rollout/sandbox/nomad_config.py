"""The settings of `backend=nomad` (connection, placement, what runs, policies), apart from
the backend so that the job builder and the API client can be typed against them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.sandbox.config import BackendConfig, Placement
from sandbox_image.config import TOKEN_ENV

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
# Config key -> the environment variable the Nomad CLI reads it from.
_ENV = {"address": "NOMAD_ADDR", "token": "NOMAD_TOKEN", "namespace": "NOMAD_NAMESPACE",
        "region": "NOMAD_REGION", "ca_cert": "NOMAD_CACERT", "client_cert": "NOMAD_CLIENT_CERT",
        "client_key": "NOMAD_CLIENT_KEY", "tls_server_name": "NOMAD_TLS_SERVER_NAME"}


# LogConfig: Nomad requires the ephemeral disk to be larger than MaxFiles * MaxFileSizeMB.
LOG_MAX_FILES = 3
LOG_MAX_FILE_MB = 10


def ns(seconds: float) -> int:
    """Seconds as the nanoseconds of a Go time.Duration."""
    return int(round(seconds * 1e9))


class Constraint(BaseModel):
    """A Nomad constraint: `{attribute} {operator} {value}`, e.g. `${node.class} = "rl"`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    attribute: str
    operator: str = "="
    value: str = ""


class NomadSettings(BackendConfig):
    """`backend=nomad`: slot servers as allocations of a Nomad service job (the settings;
    `rollout.sandbox.nomad.NomadConfig` adds how to build the backend)."""

    placement: ClassVar[Placement] = "sharded"  # remote hosts: shards, one global quota

    name: Literal["nomad"] = "nomad"
    # Where and as whom (None: the Nomad CLI's environment variable, then its default).
    address: str = "http://127.0.0.1:4646"
    token: str | None = Field(None, repr=False)
    namespace: str = "default"
    region: str | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    tls_skip_verify: bool = False
    # Where the job may run.
    datacenters: list[str] = Field(default_factory=lambda: ["*"])
    node_pool: str | None = None
    constraints: list[Constraint] = Field(default_factory=list)
    priority: int = Field(50, ge=1, le=100)
    job_prefix: str = Field("rollout-", pattern=r"^[A-Za-z0-9_.-]+$")
    # What runs: raw_exec runs `python -m sandbox_image` on the node (the project must be
    # there, at `pythonpath`); docker runs `docker_image` (sandbox_image/Dockerfile).
    driver: Literal["raw_exec", "docker"] = "raw_exec"
    python: str = "python3"
    pythonpath: str | None = _PROJECT_ROOT
    docker_image: str = "rollout-slots:latest"
    task_env: dict[str, str] = Field(default_factory=dict)
    cpu: int = Field(2000, ge=1)  # MHz per host
    memory_mb: int = Field(8192, ge=32)  # per host (all its slots)
    disk_mb: int = Field(1024, ge=1)  # ephemeral disk per allocation
    kill_timeout: float = Field(10.0, ge=0, allow_inf_nan=False)
    # Policies (explicit: Nomad's defaults restart in place and reschedule forever).
    restart_interval: float = Field(1800.0, gt=0, allow_inf_nan=False)
    restart_delay: float = Field(15.0, ge=0, allow_inf_nan=False)
    reschedule_attempts: int = Field(3, ge=0)
    reschedule_interval: float = Field(3600.0, gt=0, allow_inf_nan=False)
    reschedule_delay: float = Field(5.0, ge=0, allow_inf_nan=False)
    # API behaviour.
    request_timeout: float = Field(15.0, gt=0, allow_inf_nan=False)
    blocking_wait: float = Field(30.0, gt=0, le=600, allow_inf_nan=False)
    api_retry_window: float = Field(120.0, gt=0, allow_inf_nan=False)  # stop/close retries
    stop_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)  # alloc stopped -> not running

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        """Unset (or null) connection settings come from NOMAD_* like the Nomad CLI."""
        if isinstance(data, dict):
            data = dict(data)
            for key, var in _ENV.items():
                if data.get(key) is None and os.environ.get(var):
                    data[key] = os.environ[var]
            if data.get("tls_skip_verify") is None:
                data["tls_skip_verify"] = os.environ.get("NOMAD_SKIP_VERIFY", "") in ("1", "true")
            for key in ("address", "namespace"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> NomadSettings:
        if not self.address.startswith(("http://", "https://")):
            raise ValueError(f"address must be an http:// or https:// URL, got {self.address!r}")
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert and client_key (NOMAD_CLIENT_CERT / "
                             "NOMAD_CLIENT_KEY) go together")
        if not self.datacenters:
            raise ValueError("datacenters must name at least one datacenter (or '*')")
        if TOKEN_ENV in self.task_env:
            raise ValueError(f"task_env must not set {TOKEN_ENV} (the backend sets it)")
        problem = next(iter(nomad_rule_violations(self)), None)
        if problem:
            raise ValueError(problem)
        return self


def _loopback(address: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(address).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _python_problem(python: str, pythonpath: str | None) -> str | None:
    """Whether `python` can import what `python -m sandbox_image` needs."""
    import subprocess

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    try:
        r = subprocess.run([python, "-c", "import aiohttp, pydantic, sandbox_image.config"],
                           env=env, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"backend.python={python} cannot run on this machine's Nomad client ({e})"
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return (f"backend.python={python} cannot import the slot server's dependencies ({last}); "
            "install them for it, or point backend.python at an interpreter that has them")


# Nomad's own limits (hashicorp/nomad v1.9.7 and v1.10.5, nomad/structs/structs.go and the
# api package's defaults); a job breaking one is refused with a 400 at registration.
RESTART_MIN_INTERVAL = 5.0  # RestartPolicyMinInterval
RESCHEDULE_MIN_DELAY = 5.0  # ReschedulePolicyMinDelay
RESCHEDULE_MIN_INTERVAL = 15.0  # ReschedulePolicyMinInterval
DISK_MIN_MB = 10  # EphemeralDisk.Validate
MEMORY_MIN_MB = 10  # MinResources
PROGRESS_DEADLINE = 600.0  # api.DefaultUpdateStrategy().ProgressDeadline (our Update block)


def nomad_rule_violations(cfg: NomadSettings) -> list[str]:
    """Each setting Nomad would refuse in the job built from `cfg`, as one line naming the
    key (empty: Nomad accepts it). The job's fixed parts are in `nomad_job`: RestartPolicy
    attempts 0 (mode fail), a constant-delay ReschedulePolicy, an Update block with
    MaxParallel 0 and LogConfig of LOG_MAX_FILES x LOG_MAX_FILE_MB."""

    out = []
    if ns(cfg.restart_interval) < ns(RESTART_MIN_INTERVAL):
        out.append(f"backend.restart_interval={cfg.restart_interval:g}s is below Nomad's "
                   f"minimum restart interval of {RESTART_MIN_INTERVAL:g}s; raise it")
    if cfg.reschedule_attempts > 0:
        if ns(cfg.reschedule_delay) < ns(RESCHEDULE_MIN_DELAY):
            out.append(f"backend.reschedule_delay={cfg.reschedule_delay:g}s is below Nomad's "
                       f"minimum reschedule delay of {RESCHEDULE_MIN_DELAY:g}s; raise it (or "
                       "set backend.reschedule_attempts=0 to turn rescheduling off)")
        elif ns(cfg.reschedule_interval) < ns(RESCHEDULE_MIN_INTERVAL):
            out.append(f"backend.reschedule_interval={cfg.reschedule_interval:g}s is below "
                       f"Nomad's minimum reschedule interval of {RESCHEDULE_MIN_INTERVAL:g}s; "
                       "raise it")
        elif cfg.reschedule_attempts * ns(cfg.reschedule_delay) > ns(cfg.reschedule_interval):
            out.append(f"backend.reschedule_interval={cfg.reschedule_interval:g}s cannot hold "
                       f"backend.reschedule_attempts={cfg.reschedule_attempts} reschedules "
                       f"{cfg.reschedule_delay:g}s apart (Nomad requires interval >= attempts "
                       "x delay); raise the interval or lower the attempts")
    logs = LOG_MAX_FILES * LOG_MAX_FILE_MB
    if cfg.disk_mb < DISK_MIN_MB or cfg.disk_mb <= logs:
        out.append(f"backend.disk_mb={cfg.disk_mb} is too small: Nomad needs at least "
                   f"{DISK_MIN_MB} MB and more than the task's log storage ({logs} MB); "
                   f"set it to {logs + 1} or more")
    if cfg.memory_mb < MEMORY_MIN_MB:
        out.append(f"backend.memory_mb={cfg.memory_mb} is below Nomad's minimum of "
                   f"{MEMORY_MIN_MB} MB")
    if ns(cfg.kill_timeout) > ns(PROGRESS_DEADLINE):
        out.append(f"backend.kill_timeout={cfg.kill_timeout:g}s is longer than the task "
                   f"group's progress deadline ({PROGRESS_DEADLINE:g}s), which Nomad refuses; "
                   "lower it")
    return out
