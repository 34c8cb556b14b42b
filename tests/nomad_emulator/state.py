"""The emulated cluster: jobs, allocations, nodes, evaluations, and the scheduler's rules.

Follows Nomad v1.9/v1.10 semantics for the subset the backend uses (see app.py for the HTTP
side, validate.py for what a job must satisfy). Each allocation is a real local process: a
raw_exec task runs its command and args, a docker task runs its image's entrypoint (a table
of known images, `docker_images`) with the task's args in place of the image's CMD, after the
docker driver's own checks (image known, every `cap_add` in the node's `allow_caps`, every
port label in the group's network). Variables are interpolated as Nomad does
(${NOMAD_PORT_<label>}, ${NOMAD_IP_<label>}, ${NOMAD_TASK_DIR}, ...). Scheduling rules:

- Every change of a job (register, scale, alloc stop, deregister, an allocation that ended)
  is one evaluation, processed at once and in the order the changes were made: as Nomad's
  eval broker does for one job (a stop's eval is committed with the stop, so it is processed
  before a scale request sent after it).
- The reconciler, reduced from scheduler/reconcile.go: a group wants `Count` allocations.
  `POST /v1/allocation/:id/stop` only marks the allocation for migration; its evaluation stops
  it and places a replacement (same name index) unless the count went down. When there are
  more allocations than `Count`, `computeStop` picks: migrating ones first (highest name
  index), then the untainted ones with the HIGHEST NAME INDEX, whatever they are doing.
- Placement (feasibility, then bin-packing): a node that is ready, has the task's driver and
  has the CPU, memory and disk left the group asks for. A group that does not fit stays
  short: the evaluation records `FailedTGAllocs` (NodesExhausted, DimensionExhausted, ...)
  and is re-run when capacity frees up (Nomad's blocked evaluations).
- A task that exits while wanted is restarted in place per its RestartPolicy (Attempts within
  Interval, after Delay); past that, mode "fail" makes the allocation `failed`, and the
  ReschedulePolicy decides whether a replacement (`PreviousAllocation`) is placed after Delay.
- A lost node: its allocations become `lost` (DesiredStatus stop) and are replaced elsewhere.
- Update strategy: a null Update or MaxParallel > 0 starts a deployment on every change;
  scaling during an active one is `400 job scaling blocked due to active deployment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.nomad_emulator.validate import canonicalize

NS = 1_000_000_000
_DEAD = ("complete", "failed", "lost")
_VAR = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
_LIVE_PGIDS: set[int] = set()  # every allocation process group alive (atexit backstop)
# The docker driver's default `allow_caps` (Docker's default capability set).
DOCKER_DEFAULT_CAPS = ("audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
                       "mknod", "net_bind_service", "setfcap", "setgid", "setpcap", "setuid",
                       "sys_chroot")
# The docker driver config keys the emulator knows (a subset of the driver's hclspec).
DOCKER_CONFIG_KEYS = {"image", "args", "command", "entrypoint", "ports", "cap_add", "cap_drop",
                      "security_opt", "privileged", "volumes", "mounts", "network_mode",
                      "labels", "work_dir", "init", "auth", "force_pull", "devices"}


class DriverError(Exception):
    """The task driver refused to start the task (a Driver Failure task event)."""


class APIError(Exception):
    """An error answer: HTTP status and Nomad's plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_everything() -> None:
    """SIGKILL every allocation process this emulator started (atexit / signal backstop)."""
    for pgid in list(_LIVE_PGIDS):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_PGIDS.discard(pgid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Alloc:
    id: str
    job_id: str
    namespace: str
    group: str
    index: int  # the name index: <job>.<group>[<index>]
    node_id: str
    job_version: int
    create_index: int
    port: int
    desired: str = "run"
    client: str = "pending"
    description: str = ""
    migrating: bool = False
    previous: str = ""
    next: str = ""
    reschedule_events: list[dict[str, Any]] = field(default_factory=list)
    awaiting_reschedule: bool = False
    restarts: list[float] = field(default_factory=list)
    modify_index: int = 0
    proc: asyncio.subprocess.Process | None = None
    task_state: str = "pending"
    exit_codes: list[int | None] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)  # the task's TaskEvents
    # What it holds on its node while not terminal: CPU MHz, memory MB, disk MB.
    resources: dict[str, int] = field(default_factory=dict)

    def event(self, kind: str, message: str, **extra: Any) -> None:
        self.events.append({"Type": kind, "Time": time.time_ns(), "DisplayMessage": message,
                            "Details": {}, **extra})


@dataclass
class Deployment:
    id: str
    job_id: str
    version: int
    create_index: int
    status: str = "running"
    until: float = 0.0  # an injected deployment stays active until then


class Cluster:
    """The state machine. All methods run on the event loop of the app."""

    def __init__(self, data_dir: str | Path, *, nodes: int = 2,
                 placement_delay: float = 0.0, node_cpu: int = 32000,
                 node_memory_mb: int = 131072, node_disk_mb: int = 200000,
                 docker_images: dict[str, dict[str, Any]] | None = None,
                 docker_allow_caps: tuple[str, ...] = DOCKER_DEFAULT_CAPS) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = 1
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, id) -> job record
        self.allocs: dict[str, Alloc] = {}
        self.deployments: dict[str, Deployment] = {}
        self.evals: list[dict[str, Any]] = []
        self._last_failure: dict[str, Any] = {}
        self.blocked: set[tuple[str, str]] = set()  # jobs with a group it could not place
        self.nodes = {uuid.uuid4().hex[:8] + str(uuid.uuid4())[8:]: {
            "Name": f"emu-node-{i}", "Status": "ready", "Datacenter": "dc1",
            "Drivers": {"raw_exec", "docker"},
            "Resources": {"CPU": node_cpu, "MemoryMB": node_memory_mb, "DiskMB": node_disk_mb}}
            for i in range(nodes)}
        # image -> {"entrypoint": [...], "env": {...}}: what `docker run <image>` would run.
        self.docker_images = dict(docker_images or {})
        self.docker_allow_caps = {c.lower() for c in docker_allow_caps}
        self.placement_delay = placement_delay
        self.history: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    # --- bookkeeping -----------------------------------------------------------------------

    def bump(self) -> int:
        self.index += 1
        return self.index

    def record(self, event: str, **data: Any) -> None:
        self.history.append({"event": event, "t": time.time(), "index": self.index, **data})

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def job(self, namespace: str, job_id: str) -> dict[str, Any]:
        rec = self.jobs.get((namespace, job_id))
        if rec is None:
            raise APIError(404, f'job "{job_id}" not found')
        return rec

    def job_allocs(self, namespace: str, job_id: str) -> list[Alloc]:
        return [a for a in self.allocs.values() if a.job_id == job_id
                and a.namespace == namespace]

    def allocs_index(self, namespace: str, job_id: str | None = None) -> int:
        """The index a blocking query on allocations follows (of one job, or all: Nomad's
        `allocs` table index)."""
        return max([a.modify_index for a in self.allocs.values() if a.namespace == namespace
                    and (job_id is None or a.job_id == job_id)] or [1])

    def _touch(self, a: Alloc) -> None:
        a.modify_index = self.bump()

    # --- jobs ------------------------------------------------------------------------------

    def register(self, job: dict[str, Any], preserve_counts: bool) -> dict[str, Any]:
        job = canonicalize(job)
        key = (job["Namespace"], job["ID"])
        old = self.jobs.get(key)
        if old is not None and preserve_counts:
            counts = {tg["Name"]: tg["Count"] for tg in old["job"]["TaskGroups"]}
            for tg in job["TaskGroups"]:
                tg["Count"] = counts.get(tg["Name"], tg["Count"])
        version = 0 if old is None else old["job"]["Version"] + 1
        index = self.bump()
        job.update(Version=version, Status="pending", Stop=False,
                   CreateIndex=index if old is None else old["job"]["CreateIndex"],
                   ModifyIndex=index, JobModifyIndex=index, SubmitTime=time.time_ns())
        self.jobs[key] = {"job": job, "purged": False}
        self.record("register", job=job["ID"], version=version,
                    counts={tg["Name"]: tg["Count"] for tg in job["TaskGroups"]})
        if self._wants_deployment(job):
            self._deploy(job)
        ev = self.evaluate(job["Namespace"], job["ID"], "job-register")
        return {"EvalID": ev["ID"], "EvalCreateIndex": ev["CreateIndex"],
                "JobModifyIndex": index, "Warnings": ""}

    @staticmethod
    def _wants_deployment(job: dict[str, Any]) -> bool:
        for tg in job["TaskGroups"]:
            update = tg.get("Update") or job.get("Update")
            if update is None or (update.get("MaxParallel") or 0) > 0:
                return True
        return False

    def _deploy(self, job: dict[str, Any], until: float = 0.0) -> Deployment:
        d = Deployment(id=str(uuid.uuid4()), job_id=job["ID"], version=job["Version"],
                       create_index=self.bump(), until=until)
        self.deployments[d.id] = d
        self.record("deployment", job=job["ID"], deployment=d.id)
        return d

    def active_deployment(self, job_id: str) -> Deployment | None:
        now = time.time()
        for d in self.deployments.values():
            if d.job_id != job_id or d.status != "running":
                continue
            if d.until and now >= d.until:
                d.status = "successful"
                continue
            if not d.until and self._healthy(d):
                d.status = "successful"
                continue
            return d
        return None

    def _healthy(self, d: Deployment) -> bool:
        allocs = [a for a in self.allocs.values() if a.job_id == d.job_id and a.desired == "run"]
        return all(a.client == "running" and time.time() - a.created > 1.0 for a in allocs)

    def scale(self, namespace: str, job_id: str, group: str, count: int,
              message: str) -> dict[str, Any]:
        rec = self.job(namespace, job_id)
        tg = next((g for g in rec["job"]["TaskGroups"] if g["Name"] == group), None)
        if tg is None:
            raise APIError(400, f'group "{group}" not found in job "{job_id}"')
        if count < 0:
            raise APIError(400, "scaling action count can't be negative")
        if self.active_deployment(job_id) is not None:
            raise APIError(400, "job scaling blocked due to active deployment")
        before = tg["Count"]
        tg["Count"] = count
        index = self.bump()
        rec["job"]["ModifyIndex"] = rec["job"]["JobModifyIndex"] = index
        self.record("scale", job=job_id, group=group, before=before, count=count,
                    message=message)
        ev = self.evaluate(namespace, job_id, "job-scaling")
        return {"EvalID": ev["ID"], "EvalCreateIndex": ev["CreateIndex"],
                "JobModifyIndex": index, "Warnings": ""}

    def deregister(self, namespace: str, job_id: str, purge: bool) -> dict[str, Any]:
        rec = self.job(namespace, job_id)
        index = self.bump()
        rec["job"]["Stop"] = True
        for a in self.job_allocs(namespace, job_id):
            self._stop_alloc(a, "alloc not needed due to job update")
        if purge:
            del self.jobs[(namespace, job_id)]
        self.blocked.discard((namespace, job_id))
        self.record("deregister", job=job_id, purge=purge)
        return {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index}

    def job_status(self, namespace: str, job_id: str) -> str:
        rec = self.jobs[(namespace, job_id)]
        allocs = self.job_allocs(namespace, job_id)
        if rec["job"]["Stop"] or (allocs and all(a.client in _DEAD for a in allocs)
                                  and not any(tg["Count"] for tg in rec["job"]["TaskGroups"])):
            return "dead"
        return "running" if any(a.client == "running" for a in allocs) else "pending"

    # --- the scheduler ---------------------------------------------------------------------

    def evaluate(self, namespace: str, job_id: str, trigger: str) -> dict[str, Any]:
        """One evaluation of the job, processed now (see the module doc for the rules)."""
        rec = self.jobs.get((namespace, job_id))
        ev: dict[str, Any] = {
            "ID": str(uuid.uuid4()), "Namespace": namespace, "JobID": job_id,
            "Type": "service", "TriggeredBy": trigger, "Status": "complete",
            "Priority": (rec or {}).get("job", {}).get("Priority", 50),
            "FailedTGAllocs": None, "QueuedAllocations": {}, "BlockedEval": "",
            "CreateIndex": self.bump(), "CreateTime": time.time_ns()}
        ev["ModifyIndex"], ev["ModifyTime"] = ev["CreateIndex"], ev["CreateTime"]
        self.evals.append(ev)
        self.blocked.discard((namespace, job_id))
        if rec is None or rec["job"]["Stop"]:
            return ev
        for tg in rec["job"]["TaskGroups"]:
            failed = self._reconcile(rec["job"], tg)
            ev["QueuedAllocations"][tg["Name"]] = failed["CoalescedFailures"] + 1 if failed \
                else 0
            if failed:
                ev["FailedTGAllocs"] = {**(ev["FailedTGAllocs"] or {}), tg["Name"]: failed}
        if ev["FailedTGAllocs"]:
            ev["BlockedEval"] = str(uuid.uuid4())
            self.blocked.add((namespace, job_id))
        self.record("eval", job=job_id, trigger=trigger, eval=ev["ID"],
                    failed=sorted(ev["FailedTGAllocs"] or {}))
        return ev

    def _reconcile(self, job: dict[str, Any], tg: dict[str, Any]) -> dict[str, Any] | None:
        """Make the group have Count allocations; returns the AllocationMetric of the
        placements that failed (None: all placed)."""
        allocs = [a for a in self.job_allocs(job["Namespace"], job["ID"])
                  if a.group == tg["Name"]]
        live = [a for a in allocs if a.desired == "run" and a.client not in _DEAD]
        migrate = [a for a in live if a.migrating]
        # Untainted: what occupies a place. Failed allocations awaiting a reschedule, and
        # failed ones past their reschedule attempts, count too (Nomad does not replace them).
        untainted = [a for a in live if not a.migrating] + [
            a for a in allocs if a.client == "failed" and a.desired == "run" and not a.next]
        remove = len(untainted) + len(migrate) - tg["Count"]
        # computeStop: the migrating set first, highest name index first ...
        for a in sorted(migrate, key=lambda a: -a.index)[:max(remove, 0)]:
            migrate.remove(a)
            a.migrating = False
            self._stop_alloc(a, "alloc not needed due to job update")
            remove -= 1
        # ... then whichever untainted allocations hold the highest name indexes.
        for a in sorted(untainted, key=lambda a: -a.index)[:max(remove, 0)]:
            untainted.remove(a)
            if a.awaiting_reschedule:
                a.awaiting_reschedule = False
            if a.client == "failed":
                a.desired, a.description = "stop", "alloc not needed due to job update"
                self._touch(a)
            else:
                self._stop_alloc(a, "alloc not needed due to job update")
        metric: dict[str, Any] | None = None
        used = {a.index for a in untainted}
        for a in migrate:  # stopped through the API: stop it and place its replacement
            a.migrating = False
            self._stop_alloc(a, "alloc is being migrated")
            if self._place(job, tg, a.index, previous=a) is None:
                metric = self._failed_metric(tg, metric)
            used.add(a.index)
        missing = tg["Count"] - len(untainted) - len(migrate)
        index = 0
        while missing > 0:
            if index not in used:
                if self._place(job, tg, index) is None:
                    metric = self._failed_metric(tg, metric)
                used.add(index)
                missing -= 1
            index += 1
        return metric

    def _need(self, tg: dict[str, Any]) -> dict[str, int]:
        res = tg["Tasks"][0].get("Resources") or {}
        return {"cpu": int(res.get("CPU") or 0), "memory": int(res.get("MemoryMB") or 0),
                "disk": int((tg.get("EphemeralDisk") or {}).get("SizeMB") or 0)}

    def _free(self, node_id: str) -> dict[str, int]:
        total = self.nodes[node_id]["Resources"]
        free = {"cpu": total["CPU"], "memory": total["MemoryMB"], "disk": total["DiskMB"]}
        for a in self.allocs.values():
            if a.node_id == node_id and a.client not in _DEAD:
                for k, v in a.resources.items():
                    free[k] -= v
        return free

    def _node_for(self, tg: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """(a node with the driver and room for the group, the AllocationMetric)."""
        task = tg["Tasks"][0]
        need = self._need(tg)
        metric: dict[str, Any] = {
            "NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": len(self.nodes),
            "NodesAvailable": {}, "ClassFiltered": None, "ConstraintFiltered": None,
            "NodesExhausted": 0, "ClassExhausted": None, "DimensionExhausted": None,
            "QuotaExhausted": None, "ResourcesExhausted": None, "Scores": None,
            "ScoreMetaData": None, "AllocationTime": 0, "CoalescedFailures": 0}
        fits: dict[str, int] = {}
        for node_id, info in self.nodes.items():
            if info["Status"] != "ready":
                continue
            metric["NodesAvailable"][info["Datacenter"]] = \
                metric["NodesAvailable"].get(info["Datacenter"], 0) + 1
            metric["NodesEvaluated"] += 1
            if task["Driver"] not in info["Drivers"]:
                metric["NodesFiltered"] += 1
                metric["ConstraintFiltered"] = {"missing drivers": metric["NodesFiltered"]}
                continue
            free = self._free(node_id)
            short = [k for k in ("cpu", "memory", "disk") if free[k] < need[k]]
            if short:
                metric["NodesExhausted"] += 1
                dims = metric["DimensionExhausted"] = metric["DimensionExhausted"] or {}
                dims[short[0]] = dims.get(short[0], 0) + 1
                continue
            fits[node_id] = sum(1 for a in self.allocs.values()
                                if a.node_id == node_id and a.client not in _DEAD)
        if not fits:
            return None, metric
        return min(fits, key=lambda n: fits[n]), metric

    def _failed_metric(self, tg: dict[str, Any], metric: dict[str, Any] | None
                       ) -> dict[str, Any]:
        if metric is not None:
            metric["CoalescedFailures"] += 1
            return metric
        return self._last_failure

    def _place(self, job: dict[str, Any], tg: dict[str, Any], index: int,
               previous: Alloc | None = None) -> Alloc | None:
        node, metric = self._node_for(tg)
        if node is None:
            self._last_failure = metric
            self.record("placement_failed", job=job["ID"], group=tg["Name"],
                        exhausted=metric["DimensionExhausted"],
                        filtered=metric["NodesFiltered"])
            return None
        a = Alloc(id=str(uuid.uuid4()), job_id=job["ID"], namespace=job["Namespace"],
                  group=tg["Name"], index=index, node_id=node, job_version=job["Version"],
                  create_index=self.bump(), port=_free_port(), resources=self._need(tg))
        if previous is not None:
            a.previous = previous.id
            a.reschedule_events = list(previous.reschedule_events)
            previous.next = a.id
            self._touch(previous)
        self._touch(a)
        self.allocs[a.id] = a
        self.record("placed", job=job["ID"], group=tg["Name"], alloc=a.id, index=index,
                    previous=a.previous or None)
        self.spawn(self._run(a, job, tg))
        return a

    def _unblock(self) -> None:
        """Capacity freed up: re-run the evaluations that could not place everything."""
        if self.closed:
            return
        for ns_, job_id in list(self.blocked):
            self.evaluate(ns_, job_id, "queued-allocs")

    # --- allocation processes --------------------------------------------------------------

    def _env(self, a: Alloc, job: dict[str, Any], task: dict[str, Any]) -> dict[str, str]:
        alloc_dir = self.data_dir / "allocs" / a.id
        task_dir = alloc_dir / task["Name"] / "local"
        task_dir.mkdir(parents=True, exist_ok=True)
        (alloc_dir / "alloc").mkdir(exist_ok=True)
        label = (task.get("Config", {}).get("ports") or [None])[0]
        ports = [p["Label"] for n in self._group(job, a.group).get("Networks") or []
                 for p in n.get("DynamicPorts") or []]
        env = {"NOMAD_ALLOC_ID": a.id, "NOMAD_ALLOC_INDEX": str(a.index),
               "NOMAD_ALLOC_NAME": f"{job['ID']}.{a.group}[{a.index}]",
               "NOMAD_ALLOC_DIR": str(alloc_dir / "alloc"), "NOMAD_TASK_DIR": str(task_dir),
               "NOMAD_TASK_NAME": task["Name"], "NOMAD_GROUP_NAME": a.group,
               "NOMAD_JOB_ID": job["ID"], "NOMAD_NAMESPACE": job["Namespace"]}
        for lbl in ports or ([label] if label else []):
            env[f"NOMAD_PORT_{lbl}"] = str(a.port)
            env[f"NOMAD_IP_{lbl}"] = "127.0.0.1"
            env[f"NOMAD_ADDR_{lbl}"] = f"127.0.0.1:{a.port}"
        return env

    @staticmethod
    def _group(job: dict[str, Any], name: str) -> dict[str, Any]:
        return next(tg for tg in job["TaskGroups"] if tg["Name"] == name)

    async def _run(self, a: Alloc, job: dict[str, Any], tg: dict[str, Any]) -> None:
        """One allocation's life: placement delay, then the task (restarted per policy)."""
        task = tg["Tasks"][0]
        if self.placement_delay:
            await asyncio.sleep(self.placement_delay)
        policy = tg.get("RestartPolicy") or {"Attempts": 2, "Interval": 1800 * NS,
                                             "Delay": 15 * NS, "Mode": "fail"}
        while a.desired == "run" and not self.closed:
            env = self._env(a, job, task)

            def sub(s: str) -> str:
                return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), s)

            try:
                argv, image_env = self._command(task, self._group(job, a.group), sub)
            except DriverError as e:  # the driver refuses: the task fails without a process
                a.event("Driver Failure", str(e), DriverError=str(e), FailsTask=True)
                self._fail(a, job, tg, f"Failed tasks (driver: {e})")
                await self.notify()
                return
            proc_env = {**os.environ, **env, **image_env,
                        **{k: sub(v) for k, v in (task.get("Env") or {}).items()}}
            log_dir = Path(env["NOMAD_ALLOC_DIR"]) / "logs"
            log_dir.mkdir(exist_ok=True)
            with open(log_dir / f"{task['Name']}.stderr.0", "ab") as err, \
                    open(log_dir / f"{task['Name']}.stdout.0", "ab") as out:
                a.proc = await asyncio.create_subprocess_exec(
                    *argv, env=proc_env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=err, start_new_session=True, preexec_fn=_die_with_parent)
            _LIVE_PGIDS.add(a.proc.pid)
            if a.desired != "run":  # stopped while it was being started
                await self._kill(a, 0)
                break
            a.task_state, a.client = "running", "running"
            a.event("Started", "Task started by client")
            self._touch(a)
            self.record("running", alloc=a.id, pid=a.proc.pid)
            await self.notify()
            code = await a.proc.wait()
            _LIVE_PGIDS.discard(a.proc.pid)
            a.exit_codes.append(code)
            if a.desired != "run" or self.closed:
                break
            a.event("Terminated", f"Exit Code: {code}", ExitCode=code)
            now = time.time()
            a.restarts = [t for t in a.restarts if now - t < policy["Interval"] / NS]
            if len(a.restarts) < policy["Attempts"] or policy["Mode"] == "delay":
                a.restarts.append(now)
                self.record("restart", alloc=a.id, exit_code=code)
                await asyncio.sleep(policy["Delay"] / NS)
                continue
            self._fail(a, job, tg, f"Failed tasks (exit code {code})", exit_code=code)
            await self.notify()
            return
        a.task_state = "dead"
        if a.client not in _DEAD:
            a.client = "complete"
        self._touch(a)
        await self.notify()

    def _fail(self, a: Alloc, job: dict[str, Any], tg: dict[str, Any], why: str,
              **data: Any) -> None:
        a.client, a.task_state, a.description = "failed", "dead", why
        self._touch(a)
        self.record("failed", alloc=a.id, **data)
        self._reschedule(a, job, tg)
        self._unblock()

    def _command(self, task: dict[str, Any], tg: dict[str, Any],
                 sub: Any) -> tuple[list[str], dict[str, str]]:
        """What the task's driver runs: (argv, environment the image adds)."""
        cfg = task.get("Config") or {}
        if task["Driver"] == "raw_exec":
            if not isinstance(cfg.get("command"), str):
                raise DriverError("failed to decode driver config: missing command")
            return [sub(cfg["command"]), *(sub(x) for x in cfg.get("args") or [])], {}
        unknown = sorted(set(cfg) - DOCKER_CONFIG_KEYS)
        if unknown:
            raise DriverError(f"failed to decode driver config: unknown fields {unknown}")
        image = self.docker_images.get(cfg.get("image", ""))
        if image is None:
            raise DriverError(f"Failed to pull `{cfg.get('image')}`: manifest unknown")
        caps = {c.lower() for c in cfg.get("cap_add") or []}
        if caps - self.docker_allow_caps:
            raise DriverError("Docker driver doesn't have the following caps allowlisted on "
                              f"this Nomad agent: {sorted(caps - self.docker_allow_caps)}")
        labels = {p.get("Label") for n in tg.get("Networks") or []
                  for p in n.get("DynamicPorts") or []}
        for label in cfg.get("ports") or []:
            if label not in labels:
                raise DriverError(f"Port {label!r} not found, check network block")
        # `args` replace the image's CMD; `entrypoint`, when given, its ENTRYPOINT.
        entry = cfg.get("entrypoint") or image["entrypoint"]
        return ([sub(x) for x in entry] + [sub(x) for x in cfg.get("args") or []],
                {k: sub(v) for k, v in (image.get("env") or {}).items()})

    def _reschedule(self, a: Alloc, job: dict[str, Any], tg: dict[str, Any]) -> None:
        policy = tg.get("ReschedulePolicy") or {
            "Attempts": 0, "Interval": 0, "Delay": 30 * NS, "Unlimited": True}
        now = time.time()
        recent = [e for e in a.reschedule_events
                  if now - e["RescheduleTime"] / NS < (policy.get("Interval") or 0) / NS]
        if not policy.get("Unlimited") and len(recent) >= (policy.get("Attempts") or 0):
            self.record("not_rescheduled", alloc=a.id, attempts=len(recent))
            return
        a.awaiting_reschedule = True
        delay = (policy.get("Delay") or 0) / NS

        async def later() -> None:
            await asyncio.sleep(delay)
            rec = self.jobs.get((a.namespace, a.job_id))
            if not a.awaiting_reschedule or rec is None or rec["job"]["Stop"]:
                return
            a.awaiting_reschedule = False
            a.reschedule_events.append({"RescheduleTime": time.time_ns(), "PrevAllocID": a.id,
                                        "Delay": int(delay * NS)})
            tg_now = self._group(rec["job"], a.group)
            new = self._place(rec["job"], tg_now, a.index, previous=a)
            self.record("rescheduled", alloc=a.id, replacement=new.id if new else None)
            await self.notify()

        self.spawn(later())

    def _stop_alloc(self, a: Alloc, why: str) -> None:
        if a.desired != "run":
            return
        a.desired, a.description, a.migrating = "stop", why, False
        self._touch(a)
        self.spawn(self._kill(a, self._kill_timeout(a)))

    def _kill_timeout(self, a: Alloc) -> float:
        rec = self.jobs.get((a.namespace, a.job_id))
        if rec is None:
            return 5.0
        task = self._group(rec["job"], a.group)["Tasks"][0]
        return (task.get("KillTimeout") or 5 * NS) / NS

    async def _kill(self, a: Alloc, timeout: float) -> None:
        proc = a.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            _LIVE_PGIDS.discard(proc.pid)
        with contextlib.suppress(OSError):  # the task's own children, like Nomad's executor
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
        if a.client not in _DEAD:
            a.client = "complete"
        a.task_state = "dead"
        self._touch(a)
        self._unblock()
        await self.notify()

    def stop_alloc(self, alloc_id: str) -> dict[str, Any]:
        """Nomad's Alloc.Stop: mark it for migration and commit an evaluation with it; the
        evaluation runs now, before any request sent after this one (its replacement is
        placed unless the count went down first)."""
        a = self.allocs.get(alloc_id)
        if a is None:
            raise APIError(404, "alloc not found")
        if a.desired == "run":
            a.migrating = True
            self._touch(a)
        self.record("alloc_stop", alloc=a.id, job=a.job_id)
        ev = self.evaluate(a.namespace, a.job_id, "alloc-stop")
        return {"EvalID": ev["ID"], "Index": ev["CreateIndex"]}

    # --- faults ----------------------------------------------------------------------------

    def kill_alloc(self, alloc_id: str) -> int:
        """SIGKILL an allocation's task (it then fails, or restarts per policy)."""
        a = self.allocs[alloc_id]
        assert a.proc is not None and a.proc.returncode is None, f"{alloc_id} is not running"
        os.killpg(a.proc.pid, signal.SIGKILL)
        self.record("fault_kill", alloc=alloc_id)
        return a.proc.pid

    def node_lost(self, node_id: str) -> list[str]:
        """The node stops heartbeating: its allocations are lost and replaced elsewhere."""
        self.nodes[node_id]["Status"] = "down"
        lost = []
        jobs = set()
        for a in self.allocs.values():
            if a.node_id == node_id and a.client not in _DEAD:
                a.desired, a.client, a.description = "stop", "lost", "alloc is lost"
                self._touch(a)
                self.spawn(self._kill(a, 0))
                lost.append(a.id)
                jobs.add((a.namespace, a.job_id))
        self.record("node_lost", node=node_id, allocs=lost)
        for ns_, job_id in jobs:  # lost: stopped and replaced, whatever the reschedule policy
            self.evaluate(ns_, job_id, "node-update")
        return lost

    def block_scaling(self, job_id: str, seconds: float) -> str:
        """An active deployment on the job for `seconds` (scale calls get the 400)."""
        rec = next(r for (ns_, jid), r in self.jobs.items() if jid == job_id)
        return self._deploy(rec["job"], until=time.time() + seconds).id

    async def close(self) -> None:
        self.closed = True
        for a in self.allocs.values():
            if a.desired == "run":
                a.desired = "stop"
        await asyncio.gather(*(self._kill(a, 2.0) for a in self.allocs.values()),
                             return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def running_pids(self) -> set[int]:
        return {a.proc.pid for a in self.allocs.values()
                if a.proc is not None and a.proc.returncode is None}
