"""Sandbox slots: the SlotPool over a HostFleet, the backends and the slot-server client.
No Ray here."""

from rollout.sandbox.client import HostUnreachable, SlotRequestError, SlotServerClient
from rollout.sandbox.config import BackendConfig, PoolSection
from rollout.sandbox.fleet import HostFleet
from sandbox_image.config import SlotLimits
from rollout.sandbox.local import LocalBackend, LocalConfig
from rollout.sandbox.pool import SlotPool
from rollout.sandbox.slot_sandbox import SandboxOps, SlotSandbox

__all__ = [
    "BackendConfig",
    "HostFleet",
    "HostUnreachable",
    "LocalBackend",
    "LocalConfig",
    "PoolSection",
    "SandboxOps",
    "SlotLimits",
    "SlotPool",
    "SlotRequestError",
    "SlotSandbox",
    "SlotServerClient",
]
