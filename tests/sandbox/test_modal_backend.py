"""The modal backend against the fake modal SDK: the Backend contract, tags, reaping."""

from __future__ import annotations

import asyncio

import pytest

from rollout.sandbox.modal import ModalConfig
from sandbox_image.config import SlotLimits
from tests.fake_modal import _control
from tests.sandbox.backend_contract import BackendContract, Harness
from tests.sandbox.modal_support import fake_modal, modal_config, new_run_id  # noqa: F401

LIMITS = SlotLimits(memory_mb=512, pids=256)


class TestModalBackend(BackendContract):
    @pytest.fixture
    def harness(self, fake_modal) -> Harness:  # noqa: F811
        run = new_run_id()
        cfg = modal_config()
        return Harness(make=lambda: cfg.create(LIMITS, f"{run}-0"),
                       running=lambda: _control.running_ids(run_id=run), image="img-a")


async def test_sandboxes_are_tagged_and_configured_at_creation(fake_modal) -> None:  # noqa: F811
    run = new_run_id()
    cfg = modal_config(cpu=2.0, memory=4096, env={"A": "1"}, timeout=3000,
                       lease_reserve=2000, idle_timeout=600,
                       outbound_domain_allowlist=["pypi.org"])
    backend = cfg.create(LIMITS, f"{run}-3")
    try:
        host = await backend.start_host("img-b", 2)
        spec = _control.read_json(_control.sandbox_path(host.host_id, ".json"))
        tags = _control.read_json(_control.sandbox_path(host.host_id, ".tags.json"))
        assert tags == {"run_id": run, "pool": "3", "image": "img-b",
                        "session": backend.session}
        assert spec["timeout"] == 3000 and spec["idle_timeout"] == 600
        assert spec["encrypted_ports"] == [cfg.port]
        assert spec["resources"]["cpu"] == 2.0 and spec["resources"]["memory"] == 4096
        assert spec["network"]["domains"] == ["pypi.org"]
        assert spec["image"][0] == ["from_registry", {"tag": "img-b", "add_python": "3.11"}]
        assert spec["env"]["A"] == "1"
        # The token reaches the server as a secret: never in argv or tags.
        assert host.token not in " ".join(spec["args"]) and host.token not in str(tags)
        assert host.meta["retire_at"] == pytest.approx(
            spec["created_at"] + 3000 - 2000, abs=5)
    finally:
        await backend.close()
    assert _control.running_ids(run_id=run) == set()


async def test_restart_reaps_its_own_leftovers_and_never_other_runs(
        fake_modal) -> None:  # noqa: F811
    mine, other = new_run_id(), new_run_id()
    crashed = modal_config().create(LIMITS, f"{mine}-0")
    sibling = modal_config().create(LIMITS, f"{mine}-1")  # another shard of the same run
    stranger = modal_config().create(LIMITS, f"{other}-0")
    left = {(await crashed.start_host(None, 1)).host_id for _ in range(2)}
    kept = (await sibling.start_host(None, 1)).host_id
    theirs = (await stranger.start_host(None, 1)).host_id
    crashed._sandboxes.clear()  # it "died": nothing of it runs teardown
    restarted = modal_config().create(LIMITS, f"{mine}-0")
    try:
        assert await restarted.discover() == []
        assert _control.running_ids(run_id=mine, pool="0") == set()
        assert left.isdisjoint(_control.running_ids())
        assert {kept, theirs} <= _control.running_ids()
    finally:
        for b in (restarted, sibling, stranger):
            await b.close()


async def test_throttled_creation_is_retried(fake_modal) -> None:  # noqa: F811
    _control.set_faults(throttle_next=3)
    backend = modal_config().create(LIMITS, f"{new_run_id()}-0")
    try:
        host = await backend.start_host(None, 1)
        assert _control.running(host.host_id)
        assert _control.Faults.load().throttle_next == 0
    finally:
        await backend.close()


async def test_throttling_past_the_retries_is_a_clear_error(fake_modal) -> None:  # noqa: F811
    _control.set_faults(throttle_next=10)
    backend = modal_config(create_retries=2).create(LIMITS, f"{new_run_id()}-0")
    try:
        with pytest.raises(Exception, match="rate limit"):
            await backend.start_host(None, 1)
        assert _control.Faults.load().throttle_next == 7  # 1 try + 2 retries
    finally:
        await backend.close()


async def test_cold_start_image_build_and_scheduling_wait_are_waited_out(
        fake_modal) -> None:  # noqa: F811
    """Modal builds an image inside the first create() that uses it, a sandbox then waits
    for a worker and cold-starts: a start waits all of it out (ready_timeout counts from
    create's return), and a second host of the same image builds nothing."""
    _control.set_faults(image_build=0.5, schedule_delay=0.2, start_delay=0.2)
    backend = modal_config(ready_timeout=30.0).create(LIMITS, f"{new_run_id()}-0")
    try:
        first = await backend.start_host("img-a", 1)
        built = list((fake_modal / "images").iterdir())
        assert len(built) == 1 and _control.read_json(built[0])["seconds"] == 0.5
        second = await backend.start_host("img-a", 1)
        assert list((fake_modal / "images").iterdir()) == built
        assert {first.host_id, second.host_id} <= _control.running_ids()
    finally:
        await backend.close()


async def test_a_rate_limited_burst_is_retried_until_every_host_starts(
        fake_modal, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Modal's account-wide creation limit (ResourceExhaustedError) is retried with
    backoff; a refusal of what can never work (InvalidError) is not."""
    _control.set_faults(rate_limit=1.0)
    backend = modal_config(create_retries=10).create(LIMITS, f"{new_run_id()}-0")
    try:
        hosts = await asyncio.gather(*(backend.start_host(None, 1) for _ in range(3)))
        assert len({h.host_id for h in hosts}) == 3
        assert "Sandbox creation rate limit exceeded" in caplog.text  # it was hit, and retried
        times = sorted(c["t"] for c in _control.creations())
        assert times[2] - times[0] >= 1.0  # never more than 1 per second accepted
    finally:
        await backend.close()
    caplog.clear()
    blocked = ModalConfig.model_construct(**{**modal_config().model_dump(),
                                             "block_network": True})
    backend = blocked.create(LIMITS, f"{new_run_id()}-0")
    try:
        with pytest.raises(Exception, match="Cannot specify open ports") as e:
            await backend.start_host(None, 1)
        assert type(e.value).__name__ == "InvalidError" and "retry" not in caplog.text
    finally:
        await backend.close()


def test_block_network_is_refused_at_config_time_with_the_reason() -> None:
    with pytest.raises(ValueError, match="Modal refuses open ports") as e:
        ModalConfig(block_network=True)
    assert "outbound_cidr_allowlist" in str(e.value)


def test_missing_modal_credentials_are_one_line(tmp_path, monkeypatch) -> None:
    from rollout.settings.preflight import PreflightError, check_backend

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / ".modal.toml"))
    with pytest.raises(PreflightError) as e:
        check_backend(ModalConfig())  # the real SDK's own configuration
    assert "\n" not in str(e.value) and "MODAL_TOKEN_ID" in str(e.value)
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    check_backend(ModalConfig())


def test_lifetime_shorter_than_the_lease_reserve_is_refused() -> None:
    with pytest.raises(ValueError, match="lease_reserve"):
        ModalConfig(timeout=600, lease_reserve=600)
    with pytest.raises(ValueError, match="block_network"):
        ModalConfig(block_network=True, outbound_cidr_allowlist=["10.0.0.0/8"])


def test_launch_config_refuses_a_lease_reserve_below_the_trajectory_budget() -> None:
    from rollout.config_model import ConfigError
    from tests.launch_config import compose_config

    base = ["conf=swe_smith", "run.dir=/tmp/unused", "backend=modal"]
    cfg = compose_config(base)  # the shipped defaults fit
    assert cfg.backend.name == "modal" and cfg.backend.placement == "sharded"
    with pytest.raises(ConfigError, match="backend.lease_reserve .* shorter than one "
                                          "trajectory's worst case"):
        compose_config([*base, "agent.wall_clock_budget=3000"])
    with pytest.raises(ConfigError, match="must exceed backend.lease_reserve"):
        compose_config([*base, "backend.timeout=2400"])
    compose_config([*base, "agent.wall_clock_budget=3000", "backend.lease_reserve=4000"])


BACKSTOP = """
import asyncio, os, signal, sys
from rollout.sandbox.modal import ModalConfig
from sandbox_image.config import SlotLimits

async def main():
    backend = ModalConfig(sdk="tests.fake_modal").create(SlotLimits(disk_mb=None), sys.argv[1])
    await backend.start_host(None, 1)
    print("up", flush=True)
    if sys.argv[2] == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(60)  # never reached: SIGTERM ends the process

asyncio.run(main())  # "exit": returns without backend.close()
"""


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_backstop_terminates_what_a_process_leaves(fake_modal, how: str) -> None:  # noqa: F811
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = new_run_id()
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", BACKSTOP, f"{run}-0", how], cwd=root,
                          env={**os.environ, "PYTHONPATH": root}, capture_output=True,
                          text=True, timeout=120)
    assert "up" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == (0 if how == "exit" else -15), proc.stderr[-2000:]
    assert len(_control.all_ids()) == 1
    assert _control.running_ids(run_id=run) == set()
