"""Sandbox slots: the SlotPool, its backends and the slot-server client. No Ray here."""

from rollout.sandbox.client import HostUnreachable, SlotRequestError, SlotServerClient
from rollout.sandbox.config import PoolConfig
from rollout.sandbox.local import LocalBackend
from rollout.sandbox.pool import SlotPool
from rollout.sandbox.slot_sandbox import SlotSandbox

__all__ = [
    "HostUnreachable",
    "LocalBackend",
    "PoolConfig",
    "SlotPool",
    "SlotRequestError",
    "SlotSandbox",
    "SlotServerClient",
]
