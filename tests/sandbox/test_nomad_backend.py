"""The `nomad` backend against the Nomad API emulator (tests/nomad_emulator): the Backend
contract, the job JSON against the Go api structs, and the faults a real cluster has."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from rollout.sandbox import nomad_api
from rollout.sandbox import nomad_job as nj
from rollout.sandbox.nomad import NomadAPIError, NomadBackend, NomadConfig
from rollout.sandbox.registry import backend_config
from rollout.types import SandboxError
from sandbox_image.config import SlotLimits
from tests.nomad_emulator.app import EmulatorServer
from tests.nomad_emulator.go_fields import load_fields, problems
from tests.sandbox.backend_contract import BackendContract, Harness, _healthy

TOKEN = "emulator-acl-token-0123456789"
LIMITS = SlotLimits(memory_mb=512, pids=256,
                    images={label: {"source": "host"} for label in ("img", "img-a")})


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(tmp_path / "nomad", token=TOKEN)
    await server.start()
    yield server
    await server.close()


def config(emu: EmulatorServer, **overrides: Any) -> NomadConfig:
    return NomadConfig(**{"address": emu.url, "token": TOKEN, "python": sys.executable,
                          "stop_timeout": 30.0, **overrides})


async def eventually(predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    """Wait for a condition of the emulator's state, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class TestNomadBackend(BackendContract):
    @pytest.fixture
    async def harness(self, emulator: EmulatorServer) -> Harness:
        return Harness(make=lambda: config(emulator).create(LIMITS, "contract"),
                       running=emulator.cluster.running_pids, image="img-a")


# --- the job we send ----------------------------------------------------------------------


def _spec(**overrides: Any) -> dict[str, Any]:
    cfg = NomadConfig(address="http://nomad.test:4646", **overrides)
    group = nj.GroupSpec.of("registry.test/a:1", 4)
    return {"Job": nj.job_spec(cfg, LIMITS, job_id=nj.host_job_id("rollout-", "r1"),
                               run_id="r1", owner="h:1:2", group=group, token="s3cret" * 4)}


@pytest.mark.parametrize("driver", ["raw_exec", "docker"])
def test_every_job_field_we_send_is_a_field_of_the_go_api_structs(driver: str) -> None:
    body = _spec(driver=driver, region="eu", node_pool="gpu", namespace="rl",
                 datacenters=["dc1", "dc2"],
                 constraints=[{"attribute": "${node.class}", "value": "rl"}])
    assert problems(body, "JobRegisterRequest") == []
    # The checker itself can fail: a misspelt field and a duration string are caught.
    body["Job"]["TaskGroups"][0]["RestartPolicy"]["Attempt"] = 1
    body["Job"]["TaskGroups"][0]["ReschedulePolicy"]["Delay"] = "5s"
    assert problems(body, "JobRegisterRequest") == [
        "JobRegisterRequest.Job.TaskGroups[0].RestartPolicy.Attempt: no such field in "
        "api.RestartPolicy",
        "JobRegisterRequest.Job.TaskGroups[0].ReschedulePolicy.Delay: a duration must be "
        "integer nanoseconds, got '5s'"]


def test_the_field_list_comes_from_the_go_structs() -> None:
    fields = load_fields()
    assert "MaxParallel" in fields["UpdateStrategy"] and "Unlimited" in fields["ReschedulePolicy"]
    source = json.loads(Path("tests/nomad_emulator/go_api_fields.json").read_text())["_source"]
    assert source.startswith("hashicorp/nomad v1.9.7 (") and "v1.10.5 (" in source
    # Fields only newer releases have are not in the list: a job using them would be
    # silently misread by the releases we support.
    assert "MaxRunDuration" not in fields["TaskGroup"] and "Secrets" not in fields["Task"]


def test_policies_are_explicit_and_the_token_only_in_the_task_env() -> None:
    job = _spec(region="eu", node_pool="gpu")["Job"]
    assert job["Type"] == "service" and job["Region"] == "eu" and job["NodePool"] == "gpu"
    for tg in job["TaskGroups"]:
        assert tg["Update"] == {"MaxParallel": 0}
        assert tg["RestartPolicy"]["Attempts"] == 0 and tg["RestartPolicy"]["Mode"] == "fail"
        assert tg["ReschedulePolicy"]["Unlimited"] is False
        assert tg["ReschedulePolicy"]["Delay"] == 5 * 10**9  # nanoseconds
        assert tg["Networks"][0]["DynamicPorts"] == [{"Label": nj.PORT_LABEL}]
        (task,) = tg["Tasks"]
        assert task["Env"][nj.TOKEN_ENV] == "s3cret" * 4
        args = task["Config"]["args"]
        assert args[args.index("--port") + 1] == "${NOMAD_PORT_slot}"
    assert [tg["Count"] for tg in job["TaskGroups"]] == [1]  # one job per host
    visible = json.dumps({k: v for k, v in job.items() if k != "TaskGroups"})
    visible += json.dumps([tg["Meta"] for tg in job["TaskGroups"]] + [tg["Name"] for tg in
                                                                       job["TaskGroups"]])
    assert "s3cret" not in visible


def test_config_defaults_from_the_nomad_cli_environment(monkeypatch) -> None:
    monkeypatch.setenv("NOMAD_ADDR", "https://nomad.example:4646")
    monkeypatch.setenv("NOMAD_TOKEN", "tok-from-env-000000")
    monkeypatch.setenv("NOMAD_NAMESPACE", "rl")
    monkeypatch.setenv("NOMAD_REGION", "eu")
    monkeypatch.setenv("NOMAD_CACERT", "/etc/nomad/ca.pem")
    cfg = backend_config({"name": "nomad", "address": None})
    assert cfg.placement == "sharded"
    assert (cfg.address, cfg.token, cfg.namespace, cfg.region, cfg.ca_cert) == (
        "https://nomad.example:4646", "tok-from-env-000000", "rl", "eu", "/etc/nomad/ca.pem")
    assert "tok-from-env" not in repr(cfg)
    explicit = backend_config({"name": "nomad", "address": "http://other:4646"})
    assert explicit.address == "http://other:4646"


@pytest.mark.parametrize(("data", "message"), [
    ({"address": "nomad:4646"}, "address must be an http:// or https:// URL"),
    ({"client_cert": "/c.pem"}, "client_cert and client_key"),
    ({"driver": "podman"}, "driver"),
    ({"task_env": {"SLOT_SERVER_TOKEN": "x"}}, "task_env must not set SLOT_SERVER_TOKEN"),
])
def test_bad_config_is_a_clear_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backend_config({"name": "nomad", **data})


# --- the emulator answers like Nomad ------------------------------------------------------


async def test_emulator_answers_with_the_go_structs_fields(emulator: EmulatorServer) -> None:
    backend = config(emulator).create(LIMITS, "shapes")
    try:
        host = await backend.start_host("img-a", 1)
        api = backend.api
        job_id = host.meta["job"]
        stubs, index = await api.once("GET", f"/v1/job/{job_id}/allocations")
        assert index >= 1 and "AllocatedResources" not in stubs[0]
        assert problems(stubs[0], "AllocationListStub") == []
        listed, _ = await api.once("GET", "/v1/allocations", params=backend._filter())
        assert [a["ID"] for a in listed] == [host.host_id]
        (evaluation,) = (await api.once("GET", f"/v1/job/{job_id}/evaluations"))[0]
        assert problems(evaluation, "Evaluation") == [] and evaluation["JobID"] == job_id
        alloc, _ = await api.once("GET", f"/v1/allocation/{host.host_id}")
        assert problems(alloc, "Allocation") == []
        jobs, _ = await api.once("GET", "/v1/jobs", params={"prefix": "rollout-"})
        assert problems(jobs[0], "JobListStub") == []
        with pytest.raises(NomadAPIError) as missing:
            await api.once("GET", "/v1/job/nope")
        assert missing.value.status == 404 and missing.value.body == 'job "nope" not found'
        # A blocking query returns at once for a stale index, waits for a change otherwise.
        stale, _ = await api.once("GET", f"/v1/job/{job_id}/allocations",
                                  params={"index": "1", "wait": "5s"})
        assert len(stale) == 1
        waiter = asyncio.ensure_future(api.once(
            "GET", f"/v1/job/{job_id}/allocations",
            params={"index": str(index), "wait": "60s"}))
        await asyncio.sleep(0)
        assert not waiter.done()
        await backend.stop_host(host)
        _, later = await asyncio.wait_for(waiter, 30)
        assert later > index
    finally:
        await backend.close()


async def test_bad_token_is_a_403_with_a_hint_and_no_token(emulator: EmulatorServer) -> None:
    backend = config(emulator, token="wrong-token-99999999").create(LIMITS, "badtoken")
    try:
        with pytest.raises(NomadAPIError, match="ACL token not found.*NOMAD_TOKEN") as e:
            await backend.start_host(None, 1)
        assert e.value.status == 403 and "wrong-token" not in str(e.value)
    finally:
        await backend.close()
    assert emulator.cluster.jobs == {}


async def test_a_token_without_a_capability_is_named_at_once(emulator: EmulatorServer) -> None:
    """A 403 names the capability the refused call needs, and a refused purge is an error
    at once (not after stop_timeout)."""
    emulator.api.tokens["no-purge"] = frozenset({"submit-job", "read-job", "list-jobs"})
    backend = config(emulator).create(LIMITS, "acl")
    host = await backend.start_host(None, 1)
    try:
        # Registering is submit-job, and so is purging; reading logs is read-logs.
        emulator.api.tokens[TOKEN] = frozenset({"read-job", "list-jobs"})
        with pytest.raises(NomadAPIError, match="token lacks submit-job") as e:
            await asyncio.wait_for(backend.stop_host(host), backend.cfg.stop_timeout / 3)
        assert e.value.status == 403
        emulator.api.tokens[TOKEN] = frozenset({"read-job"})
        with pytest.raises(NomadAPIError, match="token lacks alloc-lifecycle"):
            await backend.api.call("POST", f"/v1/allocation/{host.host_id}/stop")
        assert emulator.cluster.allocs[host.host_id].desired == "run"  # nothing happened
        # close() reports the refused purge and does not wait stop_timeout for the job.
        await asyncio.wait_for(backend.close(), backend.cfg.stop_timeout / 3)
        assert emulator.cluster.allocs[host.host_id].desired == "run"
    finally:
        emulator.api.tokens[TOKEN] = emulator.api.tokens["no-purge"] | {"submit-job"}
        await backend.close()
    again = config(emulator).create(LIMITS, "acl")  # the same run, with a good token again
    assert [h.host_id for h in await again.discover()] == [host.host_id]
    await again.close()
    assert emulator.cluster.jobs == {}


# --- scaling ------------------------------------------------------------------------------


async def test_stopping_an_idle_host_never_stops_a_busy_one(emulator: EmulatorServer) -> None:
    """Nomad processes an alloc stop's evaluation before a count change sent after it (the
    eval is committed with the stop), places a replacement, and a count decrease then
    stops the highest name index (computeStop; hashicorp/nomad#7876). Whatever the backend
    does, stopping one host must leave every other host running."""
    backend = config(emulator).create(LIMITS, "scale")
    try:
        hosts = await asyncio.gather(*(backend.start_host("img", 1) for _ in range(3)))
        victim = min(hosts, key=lambda h: h.meta["alloc_name"])  # the lowest name index
        busy = [h for h in hosts if h is not victim]
        history_from = len(emulator.cluster.history)
        await backend.stop_host(victim)
        events = emulator.cluster.history[history_from:]
        for h in busy:
            assert emulator.cluster.allocs[h.host_id].desired == "run", events
            assert emulator.cluster.allocs[h.host_id].client == "running" and await _healthy(h)
        assert emulator.cluster.allocs[victim.host_id].desired == "stop"
        assert not any(e["event"] == "placed" for e in events)  # no replacement for it
        assert await backend.hosts_alive(hosts) == {h.host_id for h in busy}
    finally:
        await backend.close()


async def test_concurrent_starts_are_one_job_each(emulator: EmulatorServer) -> None:
    backend = config(emulator).create(LIMITS, "many")
    try:
        hosts = await asyncio.gather(*(backend.start_host("img", 1) for _ in range(4)))
        assert len({h.host_id for h in hosts}) == 4
        assert len({h.meta["job"] for h in hosts}) == 4
        assert not any(e["event"] == "scale" for e in emulator.cluster.history)
        # Another run's ids never match this run's filter (run "many-2" extends "many").
        other = config(emulator).create(LIMITS, "many-2")
        assert await other.discover() == []
        await other.close()
        assert await backend.hosts_alive(list(hosts)) == {h.host_id for h in hosts}
    finally:
        await backend.close()


# --- faults -------------------------------------------------------------------------------


async def test_api_errors_and_timeouts_are_retried(emulator: EmulatorServer) -> None:
    backend = config(emulator, request_timeout=1.0).create(LIMITS, "flaky")
    try:
        emulator.api.faults.fail_next += [500, 503, 429]
        emulator.api.faults.hang_next = 1
        host = await backend.start_host(None, 1)
        assert await _healthy(host)
        assert emulator.api.faults.fail_next == [] and emulator.api.faults.hang_next == 0
    finally:
        await backend.close()


async def test_a_killed_allocation_is_dead_and_rescheduled_per_policy(
        emulator: EmulatorServer) -> None:
    backend = config(emulator, reschedule_delay=5, reschedule_attempts=1).create(
        LIMITS, "kill")
    try:
        host = await backend.start_host("img", 1)
        emulator.cluster.kill_alloc(host.host_id)
        await eventually(lambda: emulator.cluster.allocs[host.host_id].client == "failed")
        assert await backend.hosts_alive([host]) == set()
        # ReschedulePolicy: one replacement, placed as Nomad does (PreviousAllocation).
        await eventually(lambda: emulator.cluster.allocs[host.host_id].next)
        replacement = emulator.cluster.allocs[emulator.cluster.allocs[host.host_id].next]
        assert replacement.previous == host.host_id
        # The fleet replaces the dead host: the rescheduled allocation is the one it gets,
        # without registering another job.
        await eventually(lambda: backend.allocs[host.host_id].get("NextAllocation"))
        registers = sum(1 for e in emulator.cluster.history if e["event"] == "register")
        await backend.stop_host(host)
        again = await backend.start_host("img", 1)
        assert again.host_id == replacement.id and await _healthy(again)
        assert sum(1 for e in emulator.cluster.history if e["event"] == "register") == registers
        # The replacement crashes too: its attempt is used up, no third allocation.
        emulator.cluster.kill_alloc(again.host_id)
        await eventually(lambda: any(e["event"] == "not_rescheduled"
                                     for e in emulator.cluster.history))
        assert await backend.hosts_alive([again]) == set()
    finally:
        await backend.close()
    assert emulator.cluster.running_pids() == set()


async def test_a_lost_node_loses_its_hosts(emulator: EmulatorServer) -> None:
    backend = config(emulator).create(LIMITS, "node")
    try:
        host = await backend.start_host("img", 1)
        lost = emulator.cluster.node_lost(host.meta["node"])
        assert lost == [host.host_id]
        assert await backend.hosts_alive([host]) == set()
        assert emulator.cluster.allocs[host.host_id].client == "lost"
        await backend.stop_host(host)
        other = await backend.start_host("img", 1)  # placed on the node still up
        assert other.meta["node"] != host.meta["node"] and await _healthy(other)
    finally:
        await backend.close()


async def test_an_api_outage_makes_starts_wait_and_liveness_keep_its_view(
        emulator: EmulatorServer) -> None:
    backend = config(emulator).create(LIMITS, "outage")
    try:
        host = await backend.start_host("img", 1)
        outage = asyncio.ensure_future(emulator.outage(2.0))
        await eventually(lambda: not emulator.api_up)
        assert await backend.hosts_alive([host]) == {host.host_id}  # not "all dead"
        start = asyncio.ensure_future(backend.start_host("img", 1))
        await outage
        second = await asyncio.wait_for(start, 120)
        assert await _healthy(second) and await _healthy(host)
    finally:
        await backend.close()


# --- runs: adoption, leftovers, strangers -------------------------------------------------


async def _crash(backend: NomadBackend) -> None:
    """What a SIGKILLed driver leaves: the job and allocations, nothing of the process
    (no atexit backstop either: a SIGKILLed process runs none)."""
    for job_id in backend.jobs:
        nomad_api._OPEN_JOBS.pop(job_id, None)
    if backend._watcher is not None:
        backend._watcher.cancel()
    await backend.api.close()
    if backend._data is not None:
        await backend._data.close()


async def test_a_restarted_run_adopts_its_hosts(emulator: EmulatorServer) -> None:
    old = config(emulator).create(LIMITS, "again")
    host = await old.start_host("img-a", 2)
    await _crash(old)
    new = config(emulator).create(LIMITS, "again")
    try:
        (adopted,) = await new.discover()
        assert adopted.host_id == host.host_id and adopted.slots == 2
        assert adopted.image == "img-a" and await _healthy(adopted)
        assert await new.hosts_alive([adopted]) == {host.host_id}
    finally:
        await new.close()
    assert emulator.cluster.jobs == {} and emulator.cluster.running_pids() == set()


async def test_leftovers_of_dead_runs_are_purged_and_others_never_touched(
        emulator: EmulatorServer) -> None:
    dead = config(emulator).create(LIMITS, "deadrun")
    await dead.start_host(None, 1)
    await _crash(dead)
    # Its owner is "this process" but another start time: a reused pid, so gone.
    (dead_job,) = dead.jobs
    job = emulator.cluster.jobs[("default", dead_job)]["job"]
    job["Meta"][nj.META_OWNER] = job["Meta"][nj.META_OWNER].rsplit(":", 1)[0] + ":1"
    live = config(emulator).create(LIMITS, "liverun")  # another run, its process alive
    await live.start_host(None, 1)
    stranger = {"ID": "rollout-not-ours", "Type": "service", "TaskGroups": [{
        "Name": "web", "Count": 0, "Tasks": [{"Name": "t", "Driver": "raw_exec",
                                              "Config": {"command": "true"}}]}]}
    emulator.cluster.register({**stranger, "Namespace": "default"}, False)
    fresh = config(emulator).create(LIMITS, "fresh")
    try:
        assert await fresh.discover() == []
        assert set(j for _, j in emulator.cluster.jobs) == {*live.jobs, "rollout-not-ours"}
    finally:
        await fresh.close()
        await live.close()


async def test_cancelled_start_purges_its_job(emulator: EmulatorServer) -> None:
    emulator.cluster.placement_delay = 30.0  # slow placement: cancelled while pending
    backend = config(emulator).create(LIMITS, "cancel")
    try:
        start = asyncio.ensure_future(backend.start_host("img", 1))
        await eventually(lambda: any(e["event"] == "placed" for e in emulator.cluster.history))
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert emulator.cluster.jobs == {} and backend.jobs == {}
        assert [e["event"] for e in emulator.cluster.history
                if e["event"] in ("register", "deregister")] == ["register", "deregister"]
    finally:
        await backend.close()


# --- Nomad's own validation: the config and the emulator refuse the same values ------------


@pytest.mark.parametrize(("bad", "key", "nomad_says"), [
    ({"restart_interval": 2}, "restart_interval", "Interval can not be less than 5s"),
    ({"reschedule_delay": 1}, "reschedule_delay", "Delay cannot be less than 5s"),
    ({"reschedule_interval": 10}, "reschedule_interval", "Interval cannot be less than 15s"),
    ({"reschedule_attempts": 5, "reschedule_interval": 20}, "reschedule_interval",
     "Nomad can only make 4 attempts in 20s"),
    ({"disk_mb": 30}, "disk_mb", "log storage (30 MB) must be less than requested disk"),
    ({"disk_mb": 5}, "disk_mb", "minimum DiskMB value is 10"),
    ({"kill_timeout": 700}, "kill_timeout", "longer than the group's ProgressDeadline (10m0s)"),
])
async def test_config_and_emulator_refuse_what_nomad_refuses(
        emulator: EmulatorServer, bad: dict[str, Any], key: str, nomad_says: str) -> None:
    with pytest.raises(ValueError) as refused:
        config(emulator, **bad)
    line = str(refused.value).splitlines()
    assert any(f"backend.{key}=" in x for x in line), refused.value
    # The same values in a job, past the config's checks: Nomad's 400, with its reason.
    good = config(emulator)
    cfg = NomadConfig.model_construct(**{**good.model_dump(), **bad})
    job = nj.job_spec(cfg, LIMITS, job_id=nj.host_job_id("rollout-", "bad"), run_id="bad",
                      owner="h:1:2", group=nj.GroupSpec.of(None, 1), token="t" * 32)
    with pytest.raises(NomadAPIError) as e:
        await good.create(LIMITS, "bad").api.once("POST", "/v1/jobs", body={"Job": job})
    assert e.value.status == 400 and nomad_says in e.value.body, e.value.body
    assert emulator.cluster.jobs == {}


def test_the_defaults_pass_nomads_rules() -> None:
    from rollout.sandbox.nomad_config import nomad_rule_violations
    from tests.nomad_emulator.validate import canonicalize, job_errors

    assert nomad_rule_violations(NomadConfig()) == []
    for driver in ("raw_exec", "docker"):
        assert job_errors(canonicalize(_spec(driver=driver)["Job"])) == []


# --- what runs: the docker driver, resources, a broken interpreter --------------------------


@pytest.fixture
async def docker_emulator(tmp_path: Path) -> AsyncIterator[EmulatorServer]:
    """Nodes whose docker driver knows the slot-server image (what `docker run` of
    sandbox_image/Dockerfile runs, with this checkout as its /opt/slot-server) and allows
    SYS_ADMIN (`allow_caps`, as conf/backend/nomad.yaml's dev cluster does)."""
    root = str(Path(__file__).resolve().parents[2])
    images = {"registry.test/rollout-slots:1": {
        "entrypoint": [sys.executable, "-m", "sandbox_image",
                       "--data-dir", "${NOMAD_TASK_DIR}/slots"],
        "env": {"PYTHONPATH": root}}}
    server = EmulatorServer(tmp_path / "nomad", token=TOKEN, docker_images=images,
                            docker_allow_caps=("chown", "kill", "sys_admin"))
    await server.start()
    yield server
    await server.close()


async def test_the_docker_driver_runs_the_slot_server_image(
        docker_emulator: EmulatorServer) -> None:
    backend = config(docker_emulator, driver="docker",
                     docker_image="registry.test/rollout-slots:1").create(LIMITS, "docker")
    try:
        host = await backend.start_host("img", 1)
        assert await _healthy(host)
        (alloc,) = docker_emulator.cluster.allocs.values()
        assert alloc.proc is not None and alloc.proc.returncode is None
    finally:
        await backend.close()
    assert docker_emulator.cluster.running_pids() == set()


async def test_a_docker_failure_ends_the_start_with_the_drivers_reason(
        docker_emulator: EmulatorServer) -> None:
    docker_emulator.cluster.docker_allow_caps = {"chown", "kill"}  # the driver's default
    backend = config(docker_emulator, driver="docker",
                     docker_image="registry.test/rollout-slots:1").create(LIMITS, "nocaps")
    try:
        with pytest.raises(SandboxError, match="caps allowlisted.*sys_admin"):
            await asyncio.wait_for(backend.start_host(None, 1), 30)
        assert docker_emulator.cluster.jobs == {}  # the failed start's job is purged
    finally:
        await backend.close()


async def test_a_host_that_does_not_fit_stays_pending_and_says_why(
        emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    node = next(iter(emulator.cluster.nodes.values()))
    for info in emulator.cluster.nodes.values():
        info["Resources"]["MemoryMB"] = 1000
    backend = config(emulator, memory_mb=600).create(LIMITS, "fit")
    try:
        first, second = await asyncio.gather(backend.start_host(None, 1),
                                             backend.start_host(None, 1))
        third = asyncio.ensure_future(backend.start_host(None, 1))  # no node has 600 MB left
        await eventually(lambda: "backend.memory_mb=600" in caplog.text)
        assert "2 of 2 node(s) lack room (memory exhausted on 2)" in caplog.text, caplog.text
        evals = [e for e in emulator.cluster.evals if e["FailedTGAllocs"]]
        assert evals and not third.done()
        await backend.stop_host(first)  # room again: Nomad's blocked evaluation places it
        host = await asyncio.wait_for(third, 60)
        assert await _healthy(host) and node["Resources"]["MemoryMB"] == 1000
        assert await backend.hosts_alive([second, host]) == {second.host_id, host.host_id}
    finally:
        await backend.close()


async def test_an_interpreter_without_the_dependencies_fails_the_start_at_once(
        emulator: EmulatorServer) -> None:
    """backend.python without aiohttp: the slot server dies on import; the start ends with
    the task's own error and the key to change, not a wait."""
    python = "/usr/bin/python3"
    probe = await asyncio.create_subprocess_exec(python, "-c", "import aiohttp",
                                                 stderr=asyncio.subprocess.DEVNULL)
    assert await probe.wait() != 0, f"{python} has aiohttp: this test needs one without"
    backend = config(emulator, python=python).create(LIMITS, "nodeps")
    try:
        with pytest.raises(SandboxError, match=r"backend.python=/usr/bin/python3 lacks the "
                                               r"module 'aiohttp'"):
            await asyncio.wait_for(backend.start_host(None, 1), 30)
    finally:
        await backend.close()


# --- preflight: before Ray starts ----------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


async def test_preflight_names_the_key_for_nomad_problems(emulator: EmulatorServer) -> None:
    from rollout.settings.preflight import PreflightError, check_backend

    def check(**overrides: Any) -> str:
        with pytest.raises(PreflightError) as e:
            check_backend(config(emulator, **overrides))  # blocking, like launch.py's
        assert "\n" not in str(e.value)
        return str(e.value)

    # The emulator serves on this loop: the blocking checks run in a thread.
    async def in_thread(**overrides: Any) -> str:
        return await asyncio.to_thread(check, **overrides)

    address = f"http://127.0.0.1:{_closed_port()}"
    assert (await in_thread(address=address)).startswith(
        f"the Nomad API at backend.address={address} is not reachable (connection refused")
    assert "does not know the token: set backend.token" in await in_thread(token="nope-0000")
    assert "backend.python=/usr/bin/python3 cannot import the slot server's dependencies " \
           "(ModuleNotFoundError: No module named 'aiohttp')" in await in_thread(
               python="/usr/bin/python3")
    await asyncio.to_thread(check_backend, config(emulator))  # all well: no error
