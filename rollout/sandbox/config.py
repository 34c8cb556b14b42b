"""Typed config of the sandbox seam: the fleet settings every backend shares.

A backend's own config subclasses `BackendConfig`, names itself with a `Literal` `name`, adds
its own fields and says how to build the backend (`create`). The registry
(`rollout.sandbox.registry`) finds the class for `backend.name`; the validated object is
frozen. Per-slot limits (memory, pids, output caps, network, ...) are not here: they are one
shared `sandbox:` section, `SlotLimits`, whatever the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from rollout.protocols import Backend
    from sandbox_image.config import SlotLimits

Placement = Literal["per_node", "sharded"]


class BackendConfig(BaseModel):
    """How many hosts, how many slots each, how fast they may start, how they are watched."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # `per_node`: one pool per Ray node, hosts on that node (local). `sharded`: `pool.shards`
    # pools sharing one global host quota, acquires routed to a shard by image (remote hosts).
    placement: ClassVar[Placement] = "per_node"

    name: str
    min_hosts: int = Field(1, ge=0)  # hosts of the default image kept up (per pool)
    max_hosts: int = Field(4, ge=1)  # per pool (per_node) or for the whole run (sharded)
    slots_per_host: int = Field(8, ge=1)
    default_image: str | None = None
    start_rate: float = Field(10.0, gt=0, allow_inf_nan=False)  # host starts per second
    start_burst: int = Field(4, ge=1)  # starts allowed at once before the rate applies
    max_starting: int = Field(4, ge=1)  # hosts starting at the same time
    host_start_timeout: float = Field(300.0, gt=0, allow_inf_nan=False)
    health_check_interval: float = Field(5.0, gt=0, allow_inf_nan=False)
    idle_scale_down: float = Field(120.0, ge=0, allow_inf_nan=False)
    acquire_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    # A free slot of one image may be moved to another (a reset into it) when its own image
    # has none free: one host serves many images. Only for backends whose slot servers can
    # fetch any image (local); a backend whose hosts are bound to one image keeps False.
    mix_images: bool = False

    @model_validator(mode="after")
    def _hosts_in_range(self) -> BackendConfig:
        if self.max_hosts < self.min_hosts:
            raise ValueError(f"max_hosts ({self.max_hosts}) must be >= min_hosts "
                             f"({self.min_hosts})")
        return self

    def check_lease_budget(self, needed: float) -> None:
        """Raise ValueError if a host may not outlive one slot lease of `needed` seconds
        (a trajectory's budget + prepare + grading + margin). Hosts without a lifetime
        limit accept any."""

    def create(self, limits: SlotLimits, run_id: str) -> Backend:
        """The backend this config describes; every host it starts enforces `limits`."""
        raise NotImplementedError(f"backend {self.name!r} does not say how to build itself")


class PoolSection(BaseModel):
    """`pool:`: how the run's slot pools are laid out (remote backends)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    shards: int = Field(1, ge=1)  # pool actors for a sharded backend (local: one per node)
