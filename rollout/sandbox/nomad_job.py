"""The Nomad job of one host: pure data, no I/O (the backend is `rollout.sandbox.nomad`).

One service job per slot-server host (see the backend's module doc for why), with one task
group of count 1 and one task: the slot server from `sandbox_image/`, listening on a dynamic
port labelled `slot`. Field names follow the Go structs of hashicorp/nomad `api/` in v1.9 and
v1.10 (tests/nomad_emulator/go_api_fields.json checks every one we send); durations are
integer nanoseconds, as the JSON API wants. Every value passes Nomad's own validation
(`rollout.sandbox.nomad_config` checks the settings against the same rules).

Policies are explicit, never Nomad's defaults:
- RestartPolicy: 0 attempts, mode "fail". A restarted slot server has lost every workspace it
  held, so it must come back as a new allocation the fleet sees, never in place.
- ReschedulePolicy: a few attempts per interval, not Nomad's service default (unlimited): a
  crash-looping host must not come back forever.
- Update: MaxParallel 0. A null Update gets Nomad's default strategy, and with it deployments
  that block scaling (`400 job scaling blocked due to active deployment`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.sandbox.nomad_config import NomadSettings as NomadConfig
    from sandbox_image.config import SlotLimits

from rollout.sandbox.nomad_config import LOG_MAX_FILE_MB, LOG_MAX_FILES, ns  # noqa: F401

PORT_LABEL = "slot"
TASK_NAME = "slot-server"
TOKEN_ENV = "SLOT_SERVER_TOKEN"  # what the slot server reads (sandbox_image/config.py)
META_RUN = "rollout_run"  # Job.Meta: the run id (never the token)
META_OWNER = "rollout_owner"  # Job.Meta: host:pid of the process that registered the job
META_IMAGE = "rollout_image"  # TaskGroup.Meta: the host image the group serves
META_SLOTS = "rollout_slots"


@dataclass(frozen=True)
class GroupSpec:
    """One task group: the hosts of one image with a fixed number of slots each."""

    name: str
    image: str | None
    slots: int

    @classmethod
    def of(cls, image: str | None, slots: int) -> GroupSpec:
        label = re.sub(r"[^a-z0-9]+", "-", (image or "default").lower()).strip("-")[:40]
        digest = hashlib.sha256(f"{image}\0{slots}".encode()).hexdigest()[:8]
        return cls(name=f"{label or 'image'}-{slots}s-{digest}", image=image, slots=slots)


_SUFFIX = "--"  # between the run id and a host job's own random part


def host_job_id(prefix: str, run_id: str) -> str:
    """A new host job's id: `<prefix><run id>--<8 hex>`."""
    return f"{prefix}{run_id}{_SUFFIX}{secrets.token_hex(4)}"


def run_job_pattern(prefix: str, run_id: str) -> str:
    """A regular expression (Go RE2 and Python alike) that matches exactly the ids
    `host_job_id` makes for this run, written without backslashes or quotes so that it
    can sit inside a Nomad filter expression's string literal."""
    literal = "".join(c if c.isalnum() else f"[{c}]" if c in "-_.~:@+ " else "."
                      for c in f"{prefix}{run_id}{_SUFFIX}")
    return f"^{literal}[0-9a-f]{{8}}$"


def job_spec(cfg: NomadConfig, limits: SlotLimits, *, job_id: str, run_id: str, owner: str,
             group: GroupSpec, token: str) -> dict[str, Any]:
    """The `Job` object of `POST /v1/jobs` (wrap it as `{"Job": ...}`): one host."""
    job: dict[str, Any] = {
        "ID": job_id,
        "Name": job_id,
        "Type": "service",
        "Namespace": cfg.namespace,
        "Datacenters": list(cfg.datacenters),
        "Priority": cfg.priority,
        "Meta": {META_RUN: run_id, META_OWNER: owner},
        "Constraints": [{"LTarget": c.attribute, "Operand": c.operator, "RTarget": c.value}
                        for c in cfg.constraints],
        "TaskGroups": [task_group(cfg, limits, group, 1, token)],
    }
    if cfg.region:
        job["Region"] = cfg.region
    if cfg.node_pool:
        job["NodePool"] = cfg.node_pool
    return job


def task_group(cfg: NomadConfig, limits: SlotLimits, group: GroupSpec, count: int,
               token: str) -> dict[str, Any]:
    return {
        "Name": group.name,
        "Count": count,
        "Meta": {META_IMAGE: group.image or "", META_SLOTS: str(group.slots)},
        "Networks": [{"Mode": "host", "DynamicPorts": [{"Label": PORT_LABEL}]}],
        "RestartPolicy": {"Attempts": 0, "Interval": ns(cfg.restart_interval),
                          "Delay": ns(cfg.restart_delay), "Mode": "fail"},
        "ReschedulePolicy": {
            "Attempts": cfg.reschedule_attempts, "Interval": ns(cfg.reschedule_interval),
            "Delay": ns(cfg.reschedule_delay), "DelayFunction": "constant",
            "MaxDelay": ns(cfg.reschedule_delay), "Unlimited": False,
        },
        "Update": {"MaxParallel": 0},
        "EphemeralDisk": {"SizeMB": cfg.disk_mb},
        "Tasks": [task(cfg, limits, group, token)],
    }


def task(cfg: NomadConfig, limits: SlotLimits, group: GroupSpec, token: str) -> dict[str, Any]:
    env = {TOKEN_ENV: token, **cfg.task_env}
    # Every slot of the group's hosts runs in the group's image (sandbox.images maps it).
    image = ["--image", group.image] if group.image else []
    if cfg.driver == "docker":
        config: dict[str, Any] = {
            "image": cfg.docker_image,
            "ports": [PORT_LABEL],
            # The image's entrypoint is `python -m sandbox_image --data-dir ...`.
            "args": ["--host", "0.0.0.0", "--port", f"${{NOMAD_PORT_{PORT_LABEL}}}",
                     "--slots", str(group.slots), *limits.to_argv(), *image],
            # bubblewrap and the per-slot disks need these (the client's docker plugin must
            # allow the capability: `allow_caps`).
            "cap_add": ["SYS_ADMIN"],
            "security_opt": ["seccomp=unconfined"],
        }
    else:
        if cfg.pythonpath:
            env["PYTHONPATH"] = cfg.pythonpath
        config = {
            "command": cfg.python,
            "args": ["-m", "sandbox_image",
                     "--host", f"${{NOMAD_IP_{PORT_LABEL}}}",
                     "--port", f"${{NOMAD_PORT_{PORT_LABEL}}}",
                     "--slots", str(group.slots),
                     "--data-dir", "${NOMAD_TASK_DIR}/slots",
                     *limits.to_argv(), *image, "--leases", "required",
                     # Host-view slots get the node's interpreter as `python`.
                     "--host-python", cfg.python],
        }
    return {
        "Name": TASK_NAME,
        "Driver": cfg.driver,
        "Config": config,
        "Env": env,
        "Resources": {"CPU": cfg.cpu, "MemoryMB": cfg.memory_mb},
        "KillTimeout": ns(cfg.kill_timeout),
        "LogConfig": {"MaxFiles": LOG_MAX_FILES, "MaxFileSizeMB": LOG_MAX_FILE_MB},
    }
