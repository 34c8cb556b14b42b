"""The Backend contract suite against the local backend and the slow, flaky test backend."""

from __future__ import annotations

import pytest

from sandbox_image.config import SlotLimits
from rollout.sandbox.local import LocalConfig
from tests.sandbox.backend_contract import BackendContract, Harness
from tests.sandbox.conftest import pid_alive, slot_server_pids
from tests.sandbox.seam_backends import SlowConfig


def _running_servers(before: set[int]) -> set[int]:
    return {p for p in slot_server_pids() if p not in before and pid_alive(p)}


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def harness(self) -> Harness:
        before = set(slot_server_pids())
        limits = SlotLimits(memory_mb=512, pids=256, images={"img-a": {"source": "host"}})
        return Harness(make=lambda: LocalConfig().create(limits, "contract"),
                       running=lambda: _running_servers(before), image="img-a")


class TestSlowFlakyBackend(BackendContract):
    """Seconds-scale starts (scaled down), 20% injected failures, cancellation anywhere."""

    @pytest.fixture
    def harness(self) -> Harness:
        before = set(slot_server_pids())
        cfg = SlowConfig(delay_before=0.1, delay_after=0.3, fail_rate=0.2, seed=3)
        limits = SlotLimits(memory_mb=512, pids=256)
        return Harness(make=lambda: cfg.create(limits, "contract"),
                       running=lambda: _running_servers(before))
