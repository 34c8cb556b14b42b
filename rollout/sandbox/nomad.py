"""`NomadBackend`: slot-server hosts as Nomad service jobs, one job per host.

Why one job per host. A count decrease lets Nomad choose what to stop: the reconciler's
`computeStop` (scheduler/reconcile.go) stops migrating allocations first, then the ones with
the highest name index, whatever they are doing. Stopping one allocation
(`POST /v1/allocation/:id/stop`) and then lowering the count cannot pin the choice: the stop
commits its own evaluation, which Nomad usually processes before the scale request arrives; it
places a replacement, and the count decrease then stops the highest-indexed allocation, which
can be a busy host (hashicorp/nomad#7876). With one job per host there is no count to lower:
retiring a host is `DELETE /v1/job/:id?purge=true` of that host's own job, and a stopped job's
evaluation stops that job's allocations and places nothing, in any order Nomad evaluates.
No other host shares the job, so none can be chosen. (The tests' emulator reproduces the
ordering and computeStop's choice; the one-job-per-run design fails there.)

How each `Backend` call maps onto the Nomad HTTP API:

- `start_host`: register a job of one task group, count 1 (`POST /v1/jobs`); wait for its
  allocation to run, read its address (`GET /v1/allocation/:id`: the list stubs carry no
  `AllocatedResources`), and return once the slot server answers its own health check. An
  allocation that fails first ends the start at once with what Nomad and the task said (the
  driver's error, or the last line of the task's stderr: `GET /v1/client/fs/logs/:id`); one
  that cannot be placed is reported (the evaluation's `FailedTGAllocs`: no room, no driver)
  and waits for room. Cancelled anywhere, the job is purged.
- `stop_host`: purge that host's job; returns once its allocation is no longer running.
- `hosts_alive`: one `GET /v1/allocations?filter=JobID matches "<this run's job ids>"`; a
  failed call answers from the last view (an API outage is not a dead host). An allocation is
  dead when its ClientStatus is failed, lost, complete or unknown, or its DesiredStatus is
  stop or evict. A dead host whose allocation Nomad already rescheduled keeps its job for one
  monitor round: the next start of the same group claims the replacement.
- A watcher follows the same list with blocking queries (`index`, `wait`, `X-Nomad-Index`)
  and wakes whoever waits on a change.
- `discover`: adopts this run's healthy hosts (a restarted driver of the same run id), and
  purges jobs of earlier runs whose registering process is gone (same machine) or whose job
  is dead. A job without our `Meta` is never touched.
- `close`: purges every job this backend registered, then waits until none runs.

ACL: the token needs submit-job, read-job, list-jobs and read-logs in the namespace; a 403
names the capability the refused call needs, at once (never after a timeout). API calls that
fail transiently (connection refused, timeouts, 5xx, 429) are retried with backoff: an API
outage makes starts wait, never fail at once. The slot-server token reaches the task through
its environment: never a job name, Meta, or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
from typing import Any

import aiohttp

from rollout.retry import NotReady, retrying, wait_until
from rollout.sandbox import nomad_job as nj
from rollout.sandbox.client import SlotServerClient
from rollout.sandbox.nomad_api import _OPEN_JOBS, NomadAPI, NomadAPIError, probe
from rollout.sandbox.nomad_config import Constraint, NomadSettings, _loopback, _python_problem  # noqa: F401 (re-export)
from rollout.sandbox.registry import register
from rollout.types import Host, SandboxError
from sandbox_image.config import SlotLimits

log = logging.getLogger(__name__)

_DEAD_CLIENT = {"failed", "lost", "complete", "unknown"}
PLACEMENT_CHECK = 3.0  # seconds without a placed allocation before asking Nomad why
_WARN_EVERY = 60.0


@register
class NomadConfig(NomadSettings):
    """`backend=nomad` (the settings are `NomadSettings`), and how to build its backend."""

    def create(self, limits: SlotLimits, run_id: str) -> NomadBackend:
        return NomadBackend(self, limits, run_id)

    def preflight(self) -> str | None:
        """Before a run (launch.py's preflight): the API answers and takes the token; a
        Nomad client on this machine (a loopback address: a dev agent) can import the slot
        server's dependencies with backend.python. One line naming the key, or None."""
        problem = probe(self)
        if problem or self.driver != "raw_exec" or not _loopback(self.address):
            return problem
        return _python_problem(self.python, self.pythonpath)


def _alive(stub: dict[str, Any] | None) -> bool:
    return (stub is not None and stub.get("DesiredStatus") == "run"
            and stub.get("ClientStatus") == "running")


def _terminal(stub: dict[str, Any] | None) -> bool:
    return stub is None or stub.get("ClientStatus") in _DEAD_CLIENT


def address_of(alloc: dict[str, Any], label: str = nj.PORT_LABEL) -> str:
    """`http://ip:port` of the allocation's port `label` (AllocatedResources.Shared.Ports,
    else the Networks' DynamicPorts)."""
    shared = (alloc.get("AllocatedResources") or {}).get("Shared") or {}
    for port in shared.get("Ports") or []:
        if port.get("Label") == label and port.get("Value"):
            return f"http://{port.get('HostIP') or '127.0.0.1'}:{port['Value']}"
    for net in shared.get("Networks") or []:
        for port in net.get("DynamicPorts") or []:
            if port.get("Label") == label and port.get("Value"):
                return f"http://{net.get('IP') or '127.0.0.1'}:{port['Value']}"
    raise SandboxError(f"Nomad allocation {alloc.get('ID')} has no port labelled {label!r}")


def _owner() -> str:
    """host:pid:start-time of this process (start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_gone(owner: str) -> bool:
    """True when `owner` (see `_owner`) was a process on this machine that no longer runs.
    Owners on other machines are never judged gone."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started


class NomadBackend:
    """Implements `rollout.protocols.Backend` over the Nomad HTTP API (see the module doc)."""

    name = "nomad"

    def __init__(self, cfg: NomadConfig, limits: SlotLimits, run_id: str) -> None:
        self.cfg = cfg
        self.limits = limits
        self.run_id = run_id
        self.api = NomadAPI(cfg)
        self._token = secrets.token_urlsafe(32)
        self._pattern = nj.run_job_pattern(cfg.job_prefix, run_id)
        self._ours = re.compile(self._pattern)
        self.jobs: dict[str, nj.GroupSpec] = {}  # job id -> its group, until purged
        self.allocs: dict[str, dict[str, Any]] = {}  # alloc id -> latest stub (our jobs)
        self.hosts: dict[str, Host] = {}  # alloc id -> host handed out
        self._released: set[str] = set()  # allocations retired: never claimed again
        self._spares: dict[str, bool] = {}  # job id of a rescheduled host -> seen a round
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._index = 0
        self._data: aiohttp.ClientSession | None = None  # for slot-server health checks
        self._closing: asyncio.Future[None] | None = None
        self._warned = -1e9

    # --- Backend ---------------------------------------------------------------------------

    async def start_host(self, image: str | None, slots: int) -> Host:
        if self._closing is not None:
            raise SandboxError("the Nomad backend is closed")
        group = nj.GroupSpec.of(image, slots)
        job_id = self._take_spare(group.name)
        try:
            if job_id is None:
                job_id = nj.host_job_id(self.cfg.job_prefix, self.run_id)
                await self._register(job_id, group)
            alloc_id = await self._claim(job_id)
            host = await self._serve(alloc_id, group, job_id, self._token)
        except BaseException:
            if job_id is not None and job_id in self.jobs:
                await asyncio.shield(self._retire(job_id))
            raise
        self.hosts[alloc_id] = host
        log.info("Nomad host %s (job %s) is up at %s", alloc_id[:8], job_id, host.url)
        return host

    async def stop_host(self, host: Host) -> None:
        if self.hosts.pop(host.host_id, None) is None:
            return
        self._released.add(host.host_id)
        job_id = host.meta["job"]
        stub = self.allocs.get(host.host_id)
        if _terminal(stub) and stub is not None and stub.get("NextAllocation"):
            # Nomad already rescheduled it (ReschedulePolicy): the replacement the fleet
            # asks for next claims that allocation (`_trim_spares` purges it otherwise).
            self._spares[job_id] = False
            return
        await self._retire(job_id, raise_errors=True)

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        if not hosts and not self._spares:
            return set()
        try:
            stubs, _ = await self.api.once("GET", "/v1/allocations", params=self._filter())
            self._absorb(stubs or [])
        except Exception as e:  # noqa: BLE001 - answer from the last view
            log.warning("Nomad liveness check failed (%s); using the last known view", e)
        await self._trim_spares()
        return {h.host_id for h in hosts
                if h.host_id in self.hosts and _alive(self.allocs.get(h.host_id))}

    async def discover(self) -> list[Host]:
        jobs = await self.api.call("GET", "/v1/jobs", params={"prefix": self.cfg.job_prefix},
                                   window=self.cfg.api_retry_window) or []
        adopted: list[Host] = []
        for stub in jobs:
            job = await self._job(stub["ID"])
            meta = (job or {}).get("Meta") or {}
            if job is None or nj.META_RUN not in meta:
                continue  # not a job of ours
            if self._ours.match(stub["ID"]) and meta.get(nj.META_RUN) == self.run_id:
                host = await self._adopt(job)
                if host is not None:
                    adopted.append(host)
            elif stub.get("Status") == "dead" or owner_gone(meta.get(nj.META_OWNER, "")):
                log.info("purging Nomad job %s left by an earlier run (%s)",
                         stub["ID"], meta.get(nj.META_RUN))
                await self._purge(stub["ID"])
        if adopted:
            log.info("adopted %d host(s) of run %s from Nomad", len(adopted), self.run_id)
        return adopted

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    # --- jobs ------------------------------------------------------------------------------

    def _filter(self, **params: str) -> dict[str, str]:
        return {"filter": f'JobID matches "{self._pattern}"', **params}

    async def _register(self, job_id: str, group: nj.GroupSpec) -> None:
        job = nj.job_spec(self.cfg, self.limits, job_id=job_id, run_id=self.run_id,
                          owner=_owner(), group=group, token=self._token)
        # Recorded before the call: a register whose answer is lost may still have landed.
        self.jobs[job_id] = group
        _OPEN_JOBS[job_id] = self.api
        self._watch()
        try:
            await self.api.call("POST", "/v1/jobs", body={"Job": job})
        except NomadAPIError:  # Nomad answered: the job was not registered
            self.jobs.pop(job_id, None)
            _OPEN_JOBS.pop(job_id, None)
            raise

    def _take_spare(self, group: str) -> str | None:
        for job_id in self._spares:
            if self.jobs.get(job_id) is not None and self.jobs[job_id].name == group:
                del self._spares[job_id]
                return job_id
        return None

    async def _trim_spares(self) -> None:
        """Spares no start claimed for one whole monitor round are purged."""
        for job_id, seen in list(self._spares.items()):
            if seen:
                del self._spares[job_id]
                await self._retire(job_id)
            else:
                self._spares[job_id] = True

    async def _purge(self, job_id: str) -> None:
        """`DELETE /v1/job/:id?purge=true`; a 404 is fine (gone), a 403 raises at once."""
        try:
            await self.api.call("DELETE", f"/v1/job/{job_id}", params={"purge": "true"},
                                window=self.cfg.api_retry_window)
        except NomadAPIError as e:
            if e.status != 404:
                raise
        self.jobs.pop(job_id, None)
        self._spares.pop(job_id, None)
        _OPEN_JOBS.pop(job_id, None)

    async def _retire(self, job_id: str, *, raise_errors: bool = False) -> None:
        """Purge a host's job and wait until its allocations stopped running."""
        try:
            await self._purge(job_id)
            await self._until(lambda: all(_terminal(s) for s in self.allocs.values()
                                          if s.get("JobID") == job_id),
                              self.cfg.stop_timeout)
        except Exception as e:  # noqa: BLE001 - close() purges what is left
            if raise_errors and isinstance(e, NomadAPIError):
                raise
            log.warning("could not stop Nomad job %s: %s", job_id, e)

    # --- allocations -----------------------------------------------------------------------

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch_loop())

    async def _watch_loop(self) -> None:
        """Follow this run's allocations with blocking queries; wake waiters on a change.
        Outages are waited out (each poll retried with backoff, which a success resets)."""
        def on_retry(n: int, e: BaseException, wait: float) -> None:
            log.warning("watching Nomad allocations of run %s failed (%s); retrying in "
                        "%.1fs", self.run_id, e, wait)

        while True:
            await retrying(Exception, retries=None, backoff=0.2, backoff_max=5.0,
                           on_retry=on_retry)(self._poll_allocations)

    async def _poll_allocations(self) -> None:
        wait = self.cfg.blocking_wait
        stubs, index = await self.api.once(
            "GET", "/v1/allocations",
            params=self._filter(index=str(self._index), wait=f"{int(wait * 1000)}ms"),
            timeout=wait * 17 / 16 + self.cfg.request_timeout)
        # An index that went backwards (a restored server) restarts from zero.
        self._index = index if index >= self._index else 0
        self._absorb(stubs or [])

    def _absorb(self, stubs: list[dict[str, Any]]) -> None:
        for stub in stubs:
            if self._ours.match(stub.get("JobID", "")):  # whatever the server filtered
                self.allocs[stub["ID"]] = stub
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, predicate: Any, timeout: float | None = None) -> None:
        """Wait until `predicate()` holds for the watcher's view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not predicate():
            changed = self._changed
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait_for(changed.wait(), left)

    async def _claim(self, job_id: str) -> str:
        """The job's running allocation. One that failed first ends the start with why; none
        placed for a while: ask Nomad why (and say so), then keep waiting for room."""
        found: list[str] = []

        def settled() -> bool:
            for alloc_id, stub in self.allocs.items():
                if stub.get("JobID") != job_id or alloc_id in self._released:
                    continue
                if _alive(stub) or (stub.get("ClientStatus") == "failed"
                                    and not stub.get("NextAllocation")):
                    found.append(alloc_id)
                    return True
            return False

        while True:
            try:
                await self._until(settled, PLACEMENT_CHECK)
                break
            except asyncio.TimeoutError:
                if not any(s.get("JobID") == job_id for s in self.allocs.values()):
                    await self._why_unplaced(job_id)
        alloc_id = found[0]
        if not _alive(self.allocs[alloc_id]):
            self._released.add(alloc_id)
            raise SandboxError(await self._why_failed(alloc_id))
        return alloc_id

    async def _why_unplaced(self, job_id: str) -> None:
        """Nomad's reason for not placing the job (its latest evaluation's FailedTGAllocs):
        logged (at most once a minute); no node with the driver at all fails the start."""
        try:
            evals, _ = await self.api.once("GET", f"/v1/job/{job_id}/evaluations")
        except Exception as e:  # noqa: BLE001 - only a diagnosis
            log.debug("could not read the evaluations of %s: %s", job_id, e)
            return
        failed = next((e["FailedTGAllocs"] for e in evals or [] if e.get("FailedTGAllocs")),
                      None)
        if not failed:
            return
        metric = next(iter(failed.values()))
        evaluated = metric.get("NodesEvaluated") or 0
        dims = ", ".join(f"{k} exhausted on {n}" for k, n in
                         (metric.get("DimensionExhausted") or {}).items())
        if evaluated and metric.get("NodesFiltered") == evaluated and not dims:
            raise SandboxError(
                f"no Nomad node can run job {job_id}: all {evaluated} node(s) were filtered "
                f"out ({metric.get('ConstraintFiltered') or 'constraints'}); check "
                f"backend.driver={self.cfg.driver} is enabled on the clients, and "
                "backend.datacenters / node_pool / constraints")
        if time.monotonic() - self._warned >= _WARN_EVERY:
            self._warned = time.monotonic()
            log.warning(
                "Nomad cannot place slot-server job %s yet: %d of %d node(s) lack room "
                "(%s) for backend.cpu=%d MHz, backend.memory_mb=%d, "
                "backend.disk_mb=%d; it stays pending until room frees up (lower those, "
                "or add Nomad clients)", job_id, metric.get("NodesExhausted") or 0,
                evaluated, dims or "resources", self.cfg.cpu, self.cfg.memory_mb,
                self.cfg.disk_mb)

    async def _why_failed(self, alloc_id: str) -> str:
        """One line: why an allocation ended before its slot server answered."""
        stub = self.allocs.get(alloc_id) or {}
        where = f"Nomad allocation {alloc_id[:8]} (node {stub.get('NodeName') or '?'})"
        events = [e for st in (stub.get("TaskStates") or {}).values()
                  for e in st.get("Events") or []]
        driver = next((e.get("DriverError") or e.get("DisplayMessage") for e in reversed(events)
                       if e.get("Type") == "Driver Failure"), None)
        if driver:
            return (f"{where}: the {self.cfg.driver} driver could not start the slot server: "
                    f"{driver}")
        tail = await self._stderr_tail(alloc_id)
        missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", tail)
        if missing and self.cfg.driver == "raw_exec":
            return (f"{where}: the slot server could not start: backend.python="
                    f"{self.cfg.python} lacks the module {missing.group(1)!r} on that node "
                    "(install the project's dependencies there, or point backend.python at "
                    "an interpreter that has them)")
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        status = stub.get("ClientDescription") or stub.get("ClientStatus") or "stopped"
        return (f"{where} ended before its slot server answered ({status})"
                + (f": {last.strip()[:300]}" if last else ""))

    async def _stderr_tail(self, alloc_id: str) -> str:
        try:
            text, _ = await self.api.once(
                "GET", f"/v1/client/fs/logs/{alloc_id}", raw=True,
                params={"task": nj.TASK_NAME, "type": "stderr", "plain": "true",
                        "origin": "end", "offset": "4096"})
            return text or ""
        except Exception as e:  # noqa: BLE001 - only a diagnosis (e.g. no read-logs)
            log.debug("could not read the log of allocation %s: %s", alloc_id, e)
            return ""

    async def _serve(self, alloc_id: str, group: nj.GroupSpec, job_id: str,
                     token: str) -> Host:
        """The allocation's address, once its slot server answers its health check."""
        alloc = await self.api.call("GET", f"/v1/allocation/{alloc_id}")
        host = Host(host_id=alloc_id, url=address_of(alloc), token=token,
                    image=group.image, slots=group.slots,
                    meta={"group": group.name, "node": alloc.get("NodeID"),
                          "alloc_name": alloc.get("Name"), "job": job_id})
        if self._data is None or self._data.closed:
            self._data = aiohttp.ClientSession()
        client = SlotServerClient(self._data, host.url, host.token)

        async def healthy() -> Host:
            try:
                await client.health(timeout=5.0)
                return host
            except Exception as e:  # noqa: BLE001 - not up yet, or dead
                if not _alive(self.allocs.get(alloc_id)):
                    raise SandboxError(await self._why_failed(alloc_id)) from e
                raise NotReady(str(e)) from e

        # No deadline here: the pool's host_start_timeout bounds the whole start.
        return await wait_until(healthy, what=f"slot server of allocation {alloc_id}",
                                interval=0.05, interval_max=1.0)

    # --- adoption and teardown -------------------------------------------------------------

    async def _job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return await self.api.call("GET", f"/v1/job/{job_id}",
                                       window=self.cfg.api_retry_window)
        except NomadAPIError as e:
            if e.status == 404:
                return None
            raise

    async def _adopt(self, job: dict[str, Any]) -> Host | None:
        """Take over one host job of this run from a driver that died: its token, group and
        healthy allocation; a job without one is purged."""
        job_id = job["ID"]
        self.jobs[job_id] = group = self._group_of(job)
        _OPEN_JOBS[job_id] = self.api
        tasks = [t for tg in job.get("TaskGroups") or [] for t in tg.get("Tasks") or []]
        token = next((t.get("Env", {}).get(nj.TOKEN_ENV) for t in tasks), None)
        stubs, _ = await self.api.once("GET", f"/v1/job/{job_id}/allocations")
        self._absorb(stubs or [])
        self._watch()
        alive = [s["ID"] for s in stubs or [] if _alive(s)]
        if token and alive:
            try:
                host = await asyncio.wait_for(self._serve(alive[0], group, job_id, token), 30)
            except Exception as e:  # noqa: BLE001
                log.warning("not adopting Nomad job %s: %s", job_id, e)
            else:
                self.hosts[host.host_id] = host
                return host
        await self._retire(job_id)
        return None

    @staticmethod
    def _group_of(job: dict[str, Any]) -> nj.GroupSpec:
        tg = (job.get("TaskGroups") or [{}])[0]
        meta = tg.get("Meta") or {}
        return nj.GroupSpec(name=tg.get("Name", ""), image=meta.get(nj.META_IMAGE) or None,
                            slots=int(meta.get(nj.META_SLOTS, "0") or 0))

    async def _close(self) -> None:
        try:
            jobs = list(self.jobs)
            self.hosts.clear()
            results = await asyncio.gather(*(self._purge(j) for j in jobs),
                                           return_exceptions=True)
            for job_id, r in zip(jobs, results):
                if isinstance(r, Exception):
                    log.error("could not purge Nomad job %s: %s", job_id, r)
            # Only what was purged is waited for: a refused purge (403) is reported now,
            # not after stop_timeout.
            jobs = [j for j, r in zip(jobs, results) if not isinstance(r, Exception)]
            if jobs:
                # Allocations placed since the watcher's last answer are waited for too.
                with contextlib.suppress(Exception):
                    stubs, _ = await self.api.once("GET", "/v1/allocations",
                                                   params=self._filter())
                    self._absorb(stubs or [])
                await self._until(lambda: all(_terminal(s) for s in self.allocs.values()
                                              if s.get("JobID") in jobs),
                                  self.cfg.stop_timeout)
                log.info("purged %d Nomad job(s) of run %s", len(jobs), self.run_id)
        except Exception as e:  # noqa: BLE001 - best effort, logged
            log.error("could not stop the Nomad jobs of run %s: %s", self.run_id, e)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                await asyncio.gather(self._watcher, return_exceptions=True)
            await self.api.close()
            if self._data is not None:
                await self._data.close()
