"""`NomadBackend`: slot-server hosts as the allocations of one Nomad service job per run.

The job (`rollout.sandbox.nomad_job`) has one task group per host image; a host is one
allocation. How each `Backend` call maps onto the Nomad HTTP API:

- `start_host`: register the job (or add the image's group, `PreserveCounts`), raise the
  group's count (`POST /v1/job/:id/scale`, coalesced per group with a cooldown; a `400 job
  scaling blocked due to active deployment` is retried), claim the next running allocation
  nobody holds, read its address (`GET /v1/allocation/:id`: the list stubs carry no
  `AllocatedResources`), and return once the slot server answers its own health check.
  Cancelled anywhere, the count goes back down and a claimed allocation is stopped.
- `stop_host`: stop that very allocation (`POST /v1/allocation/:id/stop`) and lower the count,
  so Nomad does not pick a busy one; returns once the allocation is no longer running.
- `hosts_alive`: one `GET /v1/job/:id/allocations`; a failed call answers from the last view
  (an API outage is not a dead host). An allocation is dead when its ClientStatus is failed,
  lost, complete or unknown, or its DesiredStatus is stop or evict.
- A watcher follows the job's allocations with blocking queries (`index`, `wait`,
  `X-Nomad-Index`) and wakes whoever waits on a change.
- `discover`: adopts this run's healthy allocations (a restarted driver of the same run id),
  and purges jobs of earlier runs whose registering process is gone (same machine) or whose
  job is dead. A job without our `Meta` is never touched.
- `close`: `DELETE /v1/job/:id?purge=true`, then waits until no allocation runs.

API calls that fail transiently (connection refused, timeouts, 5xx, 429) are retried with
backoff: an API outage makes starts wait, never fail at once. The slot-server token reaches
the task through its environment: never a job name, Meta, or a log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

import aiohttp

from rollout.sandbox import nomad_job as nj
from rollout.sandbox.nomad_api import _OPEN_JOBS, NomadAPI, NomadAPIError
from rollout.sandbox.client import SlotServerClient
from rollout.sandbox.nomad_config import Constraint, NomadSettings  # noqa: F401 (re-export)
from rollout.sandbox.registry import register
from rollout.types import Host, SandboxError
from sandbox_image.config import SlotLimits

log = logging.getLogger(__name__)

_DEAD_CLIENT = {"failed", "lost", "complete", "unknown"}
@register
class NomadConfig(NomadSettings):
    """`backend=nomad` (the settings are `NomadSettings`), and how to build its backend."""

    def create(self, limits: SlotLimits, run_id: str) -> NomadBackend:
        return NomadBackend(self, limits, run_id)


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
        self.job_id = nj.job_id(cfg.job_prefix, run_id)
        self.api = NomadAPI(cfg)
        self._token = secrets.token_urlsafe(32)
        self.groups: dict[str, nj.GroupSpec] = {}
        self.counts: dict[str, int] = {}  # group -> allocations wanted (hosts + starts)
        self._posted: dict[str, int] = {}  # group -> count Nomad was last told
        self._starting: collections.Counter[str] = collections.Counter()
        self._spares: dict[str, int] = {}  # group -> rescheduled allocations kept for a start
        self._spares_seen: dict[str, int] = {}
        self._last_scale: dict[str, float] = {}
        self._scale_locks: dict[str, asyncio.Lock] = {}
        self._register_lock = asyncio.Lock()
        self._registered = False  # the job is registered
        self._submitted = False  # a register call was sent (it may have landed)
        self.allocs: dict[str, dict[str, Any]] = {}  # alloc id -> latest stub
        self.hosts: dict[str, Host] = {}  # alloc id -> host handed out
        self._claimed: set[str] = set()  # allocations a start or a host holds
        self._released: set[str] = set()  # allocations we stopped: never claimed again
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._index = 0
        self._data: aiohttp.ClientSession | None = None  # for slot-server health checks
        self._closing: asyncio.Future[None] | None = None

    # --- Backend ---------------------------------------------------------------------------

    async def start_host(self, image: str | None, slots: int) -> Host:
        if self._closing is not None:
            raise SandboxError("the Nomad backend is closed")
        group = nj.GroupSpec.of(image, slots)
        await self._ensure_group(group)
        self._starting[group.name] += 1
        if self._spares.get(group.name):
            self._spares[group.name] -= 1  # a replacement Nomad already placed: no scale-up
        else:
            self.counts[group.name] += 1
        alloc_id: str | None = None
        try:
            await self._sync_count(group.name)
            alloc_id = await self._claim(group.name)
            host = await self._serve(alloc_id, group)
        except BaseException:
            await asyncio.shield(self._give_back(group.name, alloc_id))
            raise
        finally:
            self._starting[group.name] -= 1
        self.hosts[alloc_id] = host
        log.info("Nomad host %s (job %s, group %s) is up at %s",
                 alloc_id[:8], self.job_id, group.name, host.url)
        return host

    async def stop_host(self, host: Host) -> None:
        if self.hosts.pop(host.host_id, None) is None:
            return
        group = host.meta["group"]
        stub = self.allocs.get(host.host_id)
        if _terminal(stub) and stub is not None and stub.get("NextAllocation"):
            # Nomad already rescheduled it (ReschedulePolicy): keep the count, and let the
            # replacement the fleet asks for next claim that allocation (`_trim_spares`
            # stops it if nobody does).
            self._claimed.discard(host.host_id)
            self._released.add(host.host_id)
            self._spares[group] = self._spares.get(group, 0) + 1
            return
        await self._give_back(group, host.host_id)

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        if not hosts:
            return set()
        try:
            stubs, _ = await self.api.once("GET", f"/v1/job/{self.job_id}/allocations")
            self._absorb(stubs or [])
        except Exception as e:  # noqa: BLE001 - answer from the last view
            log.warning("Nomad liveness check failed (%s); using the last known view", e)
        await self._trim_spares()
        return {h.host_id for h in hosts
                if h.host_id in self.hosts and _alive(self.allocs.get(h.host_id))}

    async def _trim_spares(self) -> None:
        """Spares no start claimed for one whole monitor round are given back."""
        for group, n in list(self._spares.items()):
            if n and self._starting[group] == 0 and self._spares_seen.get(group) == n:
                self._spares[group] = 0
                self.counts[group] = max(0, self.counts[group] - n)
                await self._sync_count(group, urgent=True)
            self._spares_seen[group] = self._spares.get(group, 0)

    async def discover(self) -> list[Host]:
        jobs = await self.api.call("GET", "/v1/jobs", params={"prefix": self.cfg.job_prefix},
                                   window=self.cfg.api_retry_window) or []
        adopted: list[Host] = []
        for stub in jobs:
            job = await self._job(stub["ID"])
            meta = (job or {}).get("Meta") or {}
            if job is None or nj.META_RUN not in meta:
                continue  # not a job of ours
            if stub["ID"] == self.job_id:
                adopted = await self._adopt(job)
            elif stub.get("Status") == "dead" or owner_gone(meta.get(nj.META_OWNER, "")):
                log.info("purging Nomad job %s left by an earlier run (%s)",
                         stub["ID"], meta.get(nj.META_RUN))
                await self._purge(stub["ID"])
        return adopted

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    # --- job and counts --------------------------------------------------------------------

    async def _ensure_group(self, group: nj.GroupSpec) -> None:
        if self._registered and group.name in self.groups:
            return
        async with self._register_lock:
            if self._registered and group.name in self.groups:
                return
            self.groups[group.name] = group
            self.counts.setdefault(group.name, 0)
            self._posted.setdefault(group.name, 0)
            await self._register()

    async def _register(self) -> None:
        job = nj.job_spec(self.cfg, self.limits, job_id=self.job_id, run_id=self.run_id,
                          owner=_owner(), groups=list(self.groups.values()),
                          counts=self._posted, token=self._token)
        self._submitted = True
        _OPEN_JOBS[self.job_id] = self.api
        await self.api.call("POST", "/v1/jobs", body={"Job": job, "PreserveCounts": True})
        if not self._registered:
            log.info("registered Nomad job %s (%s, namespace %s)",
                     self.job_id, self.cfg.address, self.cfg.namespace)
        self._registered = True
        self._watch()

    async def _sync_count(self, group: str, *, urgent: bool = False) -> None:
        """Tell Nomad the group's wanted count; concurrent changes coalesce into one call,
        at most one per `scale_cooldown` (`urgent`: now, e.g. right after stopping an
        allocation, before Nomad places a replacement for it)."""
        lock = self._scale_locks.setdefault(group, asyncio.Lock())
        async with lock:
            if self._posted.get(group) == self.counts[group]:
                return
            wait = self._last_scale.get(group, -1e9) + self.cfg.scale_cooldown - time.monotonic()
            if wait > 0 and not urgent:
                await asyncio.sleep(wait)
            want = self.counts[group]
            await self.api.call("POST", f"/v1/job/{self.job_id}/scale", body={
                "Count": want, "Target": {"Group": group},
                "Message": f"rollout: {want} slot-server host(s)"})
            self._posted[group] = want
            self._last_scale[group] = time.monotonic()

    async def _give_back(self, group: str, alloc_id: str | None) -> None:
        """Undo one start or retire one host: stop its allocation, lower the count."""
        self.counts[group] = max(0, self.counts[group] - 1)
        try:
            if alloc_id is not None:
                self._released.add(alloc_id)
                if not _terminal(self.allocs.get(alloc_id)):
                    with contextlib.suppress(NomadAPIError):  # 404: already gone
                        await self.api.call("POST", f"/v1/allocation/{alloc_id}/stop",
                                            window=self.cfg.api_retry_window)
            await self._sync_count(group, urgent=True)
            if alloc_id is not None:
                await self._until(lambda: _terminal(self.allocs.get(alloc_id)),
                                  self.cfg.stop_timeout)
        except Exception as e:  # noqa: BLE001 - close() purges whatever is left
            log.warning("could not stop Nomad allocation %s: %s", alloc_id, e)
        finally:
            if alloc_id is not None:
                self._claimed.discard(alloc_id)

    # --- allocations -----------------------------------------------------------------------

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch_loop())

    async def _watch_loop(self) -> None:
        """Follow the job's allocations with blocking queries; wake waiters on a change."""
        delay = 0.2
        wait = self.cfg.blocking_wait
        while True:
            try:
                stubs, index = await self.api.once(
                    "GET", f"/v1/job/{self.job_id}/allocations",
                    params={"index": str(self._index), "wait": f"{int(wait * 1000)}ms"},
                    timeout=wait * 17 / 16 + self.cfg.request_timeout)
                # An index that went backwards (a restored server) restarts from zero.
                self._index = index if index >= self._index else 0
                self._absorb(stubs or [])
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - outages are waited out
                log.warning("watching Nomad allocations of %s failed (%s); retrying in %.1fs",
                            self.job_id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _absorb(self, stubs: list[dict[str, Any]]) -> None:
        for stub in stubs:
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

    async def _claim(self, group: str) -> str:
        """The next running allocation of `group` that no start or host holds."""
        found: list[str] = []

        def free() -> bool:
            for alloc_id, stub in self.allocs.items():
                if (stub.get("TaskGroup") == group and _alive(stub)
                        and alloc_id not in self._claimed and alloc_id not in self._released):
                    found.append(alloc_id)
                    return True
            return False

        await self._until(free)
        self._claimed.add(found[0])
        return found[0]

    async def _serve(self, alloc_id: str, group: nj.GroupSpec) -> Host:
        """The allocation's address, once its slot server answers its health check."""
        alloc = await self.api.call("GET", f"/v1/allocation/{alloc_id}")
        host = Host(host_id=alloc_id, url=address_of(alloc), token=self._token,
                    image=group.image, slots=group.slots,
                    meta={"group": group.name, "node": alloc.get("NodeID"),
                          "alloc_name": alloc.get("Name"), "job": self.job_id})
        if self._data is None or self._data.closed:
            self._data = aiohttp.ClientSession()
        client = SlotServerClient(self._data, host.url, host.token)
        delay = 0.05
        while True:
            try:
                await client.health(timeout=5.0)
                return host
            except Exception as e:  # noqa: BLE001 - not up yet, or dead
                if not _alive(self.allocs.get(alloc_id)):
                    raise SandboxError(f"Nomad allocation {alloc_id[:8]} stopped before its "
                                       f"slot server answered: {e}") from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --- adoption and teardown -------------------------------------------------------------

    async def _job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return await self.api.call("GET", f"/v1/job/{job_id}",
                                       window=self.cfg.api_retry_window)
        except NomadAPIError as e:
            if e.status == 404:
                return None
            raise

    async def _adopt(self, job: dict[str, Any]) -> list[Host]:
        """Take over this run's job from a driver that died: its token, groups and healthy
        allocations; everything else of it is stopped."""
        tasks = [t for tg in job.get("TaskGroups") or [] for t in tg.get("Tasks") or []]
        token = next((t.get("Env", {}).get(nj.TOKEN_ENV) for t in tasks), None)
        if not token:
            await self._purge(self.job_id)
            return []
        self._token = token
        for tg in job.get("TaskGroups") or []:
            meta = tg.get("Meta") or {}
            g = nj.GroupSpec(name=tg["Name"], image=meta.get(nj.META_IMAGE) or None,
                             slots=int(meta.get(nj.META_SLOTS, "0") or 0))
            self.groups[g.name] = g
            self.counts[g.name] = self._posted[g.name] = int(tg.get("Count") or 0)
        self._registered = True
        _OPEN_JOBS[self.job_id] = self.api
        stubs, self._index = await self.api.once("GET", f"/v1/job/{self.job_id}/allocations")
        self._absorb(stubs or [])
        self._watch()
        hosts: list[Host] = []
        for alloc_id, stub in list(self.allocs.items()):
            group = self.groups.get(stub.get("TaskGroup", ""))
            if group is None or not _alive(stub):
                continue
            self._claimed.add(alloc_id)
            try:
                host = await asyncio.wait_for(self._serve(alloc_id, group), 30.0)
            except Exception as e:  # noqa: BLE001
                log.warning("not adopting Nomad allocation %s: %s", alloc_id[:8], e)
                await self._give_back(group.name, alloc_id)
                continue
            self.hosts[alloc_id] = host
            hosts.append(host)
        for name in self.groups:  # starts the dead driver had in flight are not wanted
            held = sum(1 for h in hosts if h.meta["group"] == name)
            self.counts[name] = held
            await self._sync_count(name)
        log.info("adopted %d host(s) of Nomad job %s", len(hosts), self.job_id)
        return hosts

    async def _purge(self, job_id: str) -> None:
        with contextlib.suppress(NomadAPIError):  # 404: already gone
            await self.api.call("DELETE", f"/v1/job/{job_id}", params={"purge": "true"},
                                window=self.cfg.api_retry_window)

    async def _close(self) -> None:
        try:
            if self._submitted or self._registered:
                await self._purge(self.job_id)
                self.hosts.clear()
                # Allocations placed since the watcher's last answer are waited for too.
                with contextlib.suppress(Exception):
                    stubs, _ = await self.api.once("GET", f"/v1/job/{self.job_id}/allocations")
                    self._absorb(stubs or [])
                await self._until(lambda: all(_terminal(s) for s in self.allocs.values()),
                                  self.cfg.stop_timeout)
                log.info("deregistered Nomad job %s (purged)", self.job_id)
            _OPEN_JOBS.pop(self.job_id, None)
        except Exception as e:  # noqa: BLE001 - best effort, logged
            log.error("could not deregister Nomad job %s: %s", self.job_id, e)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                await asyncio.gather(self._watcher, return_exceptions=True)
            await self.api.close()
            if self._data is not None:
                await self._data.close()
