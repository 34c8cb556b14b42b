"""`PoolConfig`: how many hosts, how many slots each, and what every slot server enforces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PoolConfig:
    min_hosts: int = 1
    max_hosts: int = 4
    slots_per_host: int = 8
    default_image: str | None = None
    isolation: str = "auto"  # auto | bwrap | required | none
    network: bool = False
    exec_timeout_cap: float = 1800.0  # seconds; longer requested timeouts are clamped
    memory_mb: int | None = 4096  # per slot; None = unlimited
    pids: int | None = 1024  # per slot; None = unlimited
    output_cap: int = 256 * 1024  # bytes kept per stream of one command
    file_cap: int = 64 << 20  # read_file / archive / upload size cap
    health_check_interval: float = 5.0  # seconds between background health checks
    idle_scale_down: float = 120.0  # retire a fully idle host above min_hosts after this
    host_start_timeout: float = 300.0  # remote backends may need minutes
    acquire_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)  # extra env for every command
    # Host directories (or interpreters: their prefix is meant) that slots must see even where
    # the private /tmp hides them. The slot server's own interpreter is always included.
    expose: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if self.min_hosts < 0:
            problems.append("min_hosts must be >= 0")
        if self.max_hosts < max(1, self.min_hosts):
            problems.append("max_hosts must be >= max(1, min_hosts)")
        if self.slots_per_host < 1:
            problems.append("slots_per_host must be >= 1")
        if self.isolation not in ("auto", "bwrap", "required", "none"):
            problems.append("isolation must be auto, bwrap, required or none")
        if self.health_check_interval <= 0:
            problems.append("health_check_interval must be > 0")
        if problems:
            raise ValueError("invalid sandbox pool config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoolConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown sandbox pool config keys: {sorted(unknown)}")
        return cls(**d)
