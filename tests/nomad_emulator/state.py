"""The emulated cluster: jobs, allocations, nodes, and the scheduler's rules.

Follows Nomad's documented semantics for the subset the backend uses (see app.py for the
HTTP side). Each allocation of a raw_exec task is a real local process (its command and args
interpolated like Nomad does: ${NOMAD_PORT_<label>}, ${NOMAD_IP_<label>}, ${NOMAD_TASK_DIR},
...). Scheduling rules:

- A group wants `Count` allocations. New ones are `pending` on a ready node that has the task's
  driver, `running` once the process started (after `placement_delay`).
- A task that exits while wanted is restarted in place per its RestartPolicy (Attempts within
  Interval, after Delay); past that, mode "fail" makes the allocation `failed`, and the
  ReschedulePolicy decides whether a replacement (`PreviousAllocation`) is placed after Delay.
- `POST /v1/allocation/:id/stop` stops it (DesiredStatus stop) and marks it migrating: the
  next evaluation replaces it unless the count went down meanwhile (the migrating set is
  removed first, as Nomad's reconciler does), then pending ones, then the highest name index.
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

NS = 1_000_000_000
_DEAD = ("complete", "failed", "lost")
_VAR = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
_LIVE_PGIDS: set[int] = set()  # every allocation process group alive (atexit backstop)


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
                 placement_delay: float = 0.0) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = 1
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, id) -> job record
        self.allocs: dict[str, Alloc] = {}
        self.deployments: dict[str, Deployment] = {}
        self.nodes = {uuid.uuid4().hex[:8] + str(uuid.uuid4())[8:]: {
            "Name": f"emu-node-{i}", "Status": "ready", "Drivers": {"raw_exec"}}
            for i in range(nodes)}
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

    def allocs_index(self, namespace: str, job_id: str) -> int:
        return max([a.modify_index for a in self.job_allocs(namespace, job_id)] or [1])

    def _touch(self, a: Alloc) -> None:
        a.modify_index = self.bump()

    # --- jobs ------------------------------------------------------------------------------

    def register(self, job: dict[str, Any], preserve_counts: bool) -> dict[str, Any]:
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
        self.evaluate(job["Namespace"], job["ID"])
        return {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index,
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
        self.evaluate(namespace, job_id)
        return {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index,
                "JobModifyIndex": index, "Warnings": ""}

    def deregister(self, namespace: str, job_id: str, purge: bool) -> dict[str, Any]:
        rec = self.job(namespace, job_id)
        index = self.bump()
        rec["job"]["Stop"] = True
        for a in self.job_allocs(namespace, job_id):
            self._stop_alloc(a, "alloc not needed due to job update", migrate=False)
        if purge:
            del self.jobs[(namespace, job_id)]
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

    def evaluate(self, namespace: str, job_id: str) -> None:
        """Nomad's reconciler, reduced: make every group of the job have Count allocations."""
        rec = self.jobs.get((namespace, job_id))
        if rec is None or rec["job"]["Stop"]:
            return
        for tg in rec["job"]["TaskGroups"]:
            allocs = [a for a in self.job_allocs(namespace, job_id) if a.group == tg["Name"]]
            # What occupies a place in the group: allocations wanted and not finished, those
            # stopped through the API and not yet replaced, failed ones awaiting a reschedule,
            # and failed ones past their reschedule attempts (Nomad does not replace those).
            occupying = [a for a in allocs if (a.desired == "run" and a.client not in _DEAD)
                         or a.migrating or a.awaiting_reschedule
                         or (a.client == "failed" and not a.next and a.desired == "run")]
            extra = len(occupying) - tg["Count"]
            if extra > 0:
                order = sorted(occupying, key=lambda a: (
                    not a.migrating, not a.awaiting_reschedule, a.client != "pending",
                    -a.index))
                for a in order[:extra]:
                    a.migrating = a.awaiting_reschedule = False
                    if a.desired == "run":
                        self._stop_alloc(a, "alloc not needed due to job update", migrate=False)
                    self._touch(a)
                occupying = [a for a in occupying if a not in order[:extra]]
            for a in [a for a in occupying if a.migrating]:
                a.migrating = False
                self._place(rec["job"], tg, a.index, previous=a)
            used = {a.index for a in occupying}
            missing = tg["Count"] - len(occupying)
            index = 0
            while missing > 0:
                if index not in used:
                    if self._place(rec["job"], tg, index) is None:
                        break
                    missing -= 1
                index += 1

    def _node_for(self, task: dict[str, Any]) -> str | None:
        ready = [n for n, info in self.nodes.items()
                 if info["Status"] == "ready" and task["Driver"] in info["Drivers"]]
        if not ready:
            return None
        load = {n: 0 for n in ready}
        for a in self.allocs.values():
            if a.node_id in load and a.client not in _DEAD:
                load[a.node_id] += 1
        return min(ready, key=lambda n: load[n])

    def _place(self, job: dict[str, Any], tg: dict[str, Any], index: int,
               previous: Alloc | None = None) -> Alloc | None:
        task = tg["Tasks"][0]
        node = self._node_for(task)
        if node is None:
            self.record("placement_failed", job=job["ID"], group=tg["Name"],
                        reason=f"no ready node with driver {task['Driver']!r}")
            return None
        a = Alloc(id=str(uuid.uuid4()), job_id=job["ID"], namespace=job["Namespace"],
                  group=tg["Name"], index=index, node_id=node, job_version=job["Version"],
                  create_index=self.bump(), port=_free_port())
        if previous is not None:
            a.previous = previous.id
            a.reschedule_events = list(previous.reschedule_events)
            previous.next = a.id
            self._touch(previous)
        self._touch(a)
        self.allocs[a.id] = a
        self.record("placed", job=job["ID"], group=tg["Name"], alloc=a.id,
                    previous=a.previous or None)
        self.spawn(self._run(a, job, tg))
        return a

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

            cfg = task.get("Config") or {}
            argv = [sub(cfg["command"]), *(sub(x) for x in cfg.get("args") or [])]
            proc_env = {**os.environ, **env,
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
            self._touch(a)
            self.record("running", alloc=a.id, pid=a.proc.pid)
            await self.notify()
            code = await a.proc.wait()
            _LIVE_PGIDS.discard(a.proc.pid)
            a.exit_codes.append(code)
            if a.desired != "run" or self.closed:
                break
            now = time.time()
            a.restarts = [t for t in a.restarts if now - t < policy["Interval"] / NS]
            if len(a.restarts) < policy["Attempts"] or policy["Mode"] == "delay":
                a.restarts.append(now)
                self.record("restart", alloc=a.id, exit_code=code)
                await asyncio.sleep(policy["Delay"] / NS)
                continue
            a.client, a.task_state = "failed", "dead"
            a.description = f"Failed tasks (exit code {code})"
            self._touch(a)
            self.record("failed", alloc=a.id, exit_code=code)
            self._reschedule(a, job, tg)
            await self.notify()
            return
        a.task_state = "dead"
        if a.client not in _DEAD:
            a.client = "complete"
        self._touch(a)
        await self.notify()

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

    def _stop_alloc(self, a: Alloc, why: str, *, migrate: bool) -> None:
        if a.desired != "run":
            return
        a.desired, a.description, a.migrating = "stop", why, migrate
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
        await self.notify()

    def stop_alloc(self, alloc_id: str) -> dict[str, Any]:
        a = self.allocs.get(alloc_id)
        if a is None:
            raise APIError(404, "alloc not found")
        self._stop_alloc(a, "alloc is being migrated", migrate=True)
        self.record("alloc_stop", alloc=a.id, job=a.job_id)
        index = self.bump()

        async def evaluate_soon() -> None:  # the eval Nomad creates for the stop
            await asyncio.sleep(0.05)
            self.evaluate(a.namespace, a.job_id)
            await self.notify()

        self.spawn(evaluate_soon())
        return {"EvalID": str(uuid.uuid4()), "Index": index}

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
                a.migrating = True  # replaced at once, whatever the reschedule policy
        self.record("node_lost", node=node_id, allocs=lost)
        for ns_, job_id in jobs:
            self.evaluate(ns_, job_id)
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
