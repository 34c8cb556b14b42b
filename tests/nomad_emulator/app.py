"""The emulator's HTTP side: the Nomad API subset, and a control API for fault injection.

Nomad's conventions kept: JSON bodies with Go field names, plain-text error bodies, 403
"Permission denied" for a token that is unknown or lacks the route's ACL capability
(X-Nomad-Token or Authorization: Bearer; `tokens` maps each secret to its namespace
capabilities: submit-job, read-job, list-jobs, scale-job, alloc-lifecycle, read-logs), 404
`job "x" not found`, `?namespace=` (default "default"), blocking queries (`index`, `wait` as a
Go duration, default 5 min, max 10 min) with X-Nomad-Index, X-Nomad-KnownLeader and
X-Nomad-LastContact on every answer, `filter` expressions on allocation lists (the subset
`JobID matches "<regexp>"` / `JobID == "<id>"`). A registered job is canonicalized and
validated with Nomad's own rules (validate.py): a bad one is a 400 with Nomad's message. One
deliberate strictness: a job with a field the Go `api` structs of v1.9/v1.10 do not have is
refused with a 400 (Nomad would silently ignore it, which is exactly the bug this emulator
should catch).

`EmulatorServer` runs both apps on this loop; `outage(seconds)` closes the API port (the
allocations keep running, as when Nomad's servers are down) and opens it again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.nomad_emulator.go_fields import load_fields, problems
from tests.nomad_emulator.state import NS, Alloc, APIError, Cluster
from tests.nomad_emulator.validate import canonicalize, job_errors, validation_body

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_WAIT = 600.0
ALL_CAPABILITIES = frozenset({"submit-job", "read-job", "list-jobs", "scale-job",
                              "alloc-lifecycle", "read-logs"})
_FILTER = re.compile(r'^\s*JobID\s+(matches|==)\s+"([^"\\]*)"\s*$')


def _capability(method: str, path: str) -> str | None:
    """The namespace ACL capability a route needs (None: any valid token, or none)."""
    if path.startswith("/v1/status/"):
        return None
    if path.startswith("/v1/client/fs/logs/"):
        return "read-logs"
    if path.endswith("/stop") and path.startswith("/v1/allocation/"):
        return "alloc-lifecycle"
    if path.endswith("/scale") and method != "GET":
        return "scale-job"
    if path == "/v1/jobs" and method == "GET":
        return "list-jobs"
    if method in ("POST", "PUT", "DELETE"):
        return "submit-job"
    return "read-job"


def go_duration(text: str) -> float:
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise APIError(400, f'Invalid wait time: time: invalid duration "{text}"')
    return sum(float(n) * _UNIT[u] for n, u in parts)


class Faults:
    def __init__(self) -> None:
        self.fail_next: list[int] = []  # statuses for the next API requests
        self.hang_next = 0  # requests that never get an answer (the client times out)
        self.hang_seconds = 3600.0


class NomadAPI:
    """The `/v1/...` routes over a `Cluster`."""

    def __init__(self, cluster: Cluster, token: str | None = None) -> None:
        self.cluster = cluster
        self.token = token
        # ACL secret -> its capabilities (with `token` set, that one has them all).
        self.tokens: dict[str, frozenset[str]] = {} if token is None else {
            token: ALL_CAPABILITIES}
        self.faults = Faults()
        self.fields = load_fields()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/v1/status/leader", self.leader)
        r.add_post("/v1/jobs", self.register)
        r.add_put("/v1/jobs", self.register)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_get("/v1/job/{id}", self.get_job)
        r.add_delete("/v1/job/{id}", self.deregister)
        r.add_get("/v1/job/{id}/allocations", self.job_allocations)
        r.add_post("/v1/job/{id}/scale", self.scale)
        r.add_put("/v1/job/{id}/scale", self.scale)
        r.add_get("/v1/job/{id}/deployments", self.deployments)
        r.add_get("/v1/job/{id}/evaluations", self.evaluations)
        r.add_get("/v1/allocations", self.allocations)
        r.add_get("/v1/allocation/{id}", self.get_alloc)
        r.add_post("/v1/allocation/{id}/stop", self.stop_alloc)
        r.add_put("/v1/allocation/{id}/stop", self.stop_alloc)
        r.add_get("/v1/client/fs/logs/{id}", self.logs)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if self.faults.hang_next > 0:
            self.faults.hang_next -= 1
            await asyncio.sleep(self.faults.hang_seconds)
        if self.faults.fail_next:
            status = self.faults.fail_next.pop(0)
            return self._text(status, "rpc error: emulated failure (fault injection)")
        if self.tokens:
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = request.headers.get("X-Nomad-Token") or bearer
            need = _capability(request.method, request.path)
            caps = self.tokens.get(given)
            if caps is None and need is not None:
                return self._text(403, "ACL token not found")
            if need is not None and need not in (caps or ()):
                return self._text(403, "Permission denied")
        try:
            return await handler(request)
        except APIError as e:
            return self._text(e.status, e.text)
        except web.HTTPException:
            raise

    def _text(self, status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text, content_type="text/plain",
                            headers=self._headers())

    def _headers(self, index: int | None = None) -> dict[str, str]:
        return {"X-Nomad-Index": str(index or self.cluster.index),
                "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}

    def _json(self, data: Any, index: int | None = None) -> web.Response:
        return web.json_response(data, headers=self._headers(index))

    @staticmethod
    def _ns(request: web.Request) -> str:
        return request.query.get("namespace") or "default"

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.text())
        except ValueError as e:
            raise APIError(400, f"Failed to decode request body: {e}") from None

    # --- routes ----------------------------------------------------------------------------

    async def leader(self, request: web.Request) -> web.Response:
        return self._json("127.0.0.1:4647")

    async def register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("Job"), dict):
            raise APIError(400, "Job must be specified")
        bad = problems(body, "JobRegisterRequest", self.fields)
        if bad:
            raise APIError(400, "; ".join(bad))
        job = body["Job"]
        self._validate(job)
        errors = job_errors(canonicalize(job))
        if errors:
            raise APIError(400, validation_body(errors))
        job.setdefault("Namespace", self._ns(request))
        if job["Namespace"] != self._ns(request):
            raise APIError(400, "Job namespace does not match request namespace")
        result = self.cluster.register(job, bool(body.get("PreserveCounts")))
        await self.cluster.notify()
        return self._json(result, result["JobModifyIndex"])

    @staticmethod
    def _validate(job: dict[str, Any]) -> None:
        errors = []
        if not job.get("ID"):
            errors.append("Missing job ID")
        if job.get("Type", "service") != "service":
            errors.append(f"emulator only runs service jobs, not {job.get('Type')!r}")
        groups = job.get("TaskGroups") or []
        if not groups:
            errors.append("Missing job task groups")
        names = [g.get("Name") for g in groups]
        if len(set(names)) != len(names) or not all(names):
            errors.append("Job task group names must be unique and non-empty")
        for g in groups:
            if not isinstance(g.get("Count", 1), int) or g.get("Count", 1) < 0:
                errors.append(f"Task group {g.get('Name')} count must be >= 0")
            g.setdefault("Count", 1)
            tasks = g.get("Tasks") or []
            if len(tasks) != 1:
                errors.append(f"Task group {g.get('Name')}: the emulator runs one task")
            for t in tasks:
                if t.get("Driver") not in ("raw_exec", "docker"):
                    errors.append(f"Task {t.get('Name')}: unknown driver {t.get('Driver')!r}")
                if t.get("Driver") == "raw_exec" and not (t.get("Config") or {}).get("command"):
                    errors.append(f"Task {t.get('Name')}: raw_exec needs Config.command")
                if t.get("Driver") == "docker" and not (t.get("Config") or {}).get("image"):
                    errors.append(f"Task {t.get('Name')}: docker needs Config.image")
        if errors:
            raise APIError(400, f"{len(errors)} error(s) occurred:\n\n* "
                           + "\n* ".join(errors))

    async def list_jobs(self, request: web.Request) -> web.Response:
        ns, prefix = self._ns(request), request.query.get("prefix", "")
        out = [self._job_stub(rec["job"]) for (jns, jid), rec in self.cluster.jobs.items()
               if jns == ns and jid.startswith(prefix)]
        return self._json(sorted(out, key=lambda j: j["ID"]))

    def _job_stub(self, job: dict[str, Any]) -> dict[str, Any]:
        return {"ID": job["ID"], "ParentID": "", "Name": job.get("Name", job["ID"]),
                "Namespace": job["Namespace"], "Datacenters": job.get("Datacenters"),
                "Type": "service", "Priority": job.get("Priority", 50), "Periodic": False,
                "ParameterizedJob": False, "Stop": job["Stop"],
                "Status": self.cluster.job_status(job["Namespace"], job["ID"]),
                "StatusDescription": "", "JobSummary": None,
                "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"],
                "JobModifyIndex": job["JobModifyIndex"], "SubmitTime": job["SubmitTime"],
                "Meta": job.get("Meta")}

    async def get_job(self, request: web.Request) -> web.Response:
        ns, jid = self._ns(request), request.match_info["id"]
        job = dict(self.cluster.job(ns, jid)["job"])
        job["Status"] = self.cluster.job_status(ns, jid)
        return self._json(job, job["ModifyIndex"])

    async def deregister(self, request: web.Request) -> web.Response:
        purge = request.query.get("purge", "false").lower() in ("true", "1")
        result = self.cluster.deregister(self._ns(request), request.match_info["id"], purge)
        await self.cluster.notify()
        return self._json(result)

    async def job_allocations(self, request: web.Request) -> web.Response:
        ns, jid = self._ns(request), request.match_info["id"]
        index = await self._block(request, lambda: self.cluster.allocs_index(ns, jid))
        stubs = [self._alloc_stub(a) for a in self.cluster.job_allocs(ns, jid)]
        return self._json(stubs, index)

    async def allocations(self, request: web.Request) -> web.Response:
        """`GET /v1/allocations`, with `filter` (the subset in the module doc)."""
        ns = self._ns(request)
        text = request.query.get("filter")
        keep: Any = lambda a: True  # noqa: E731
        if text:
            m = _FILTER.match(text)
            if m is None:
                raise APIError(400, f"failed to read filter expression: {text!r} (the "
                               "emulator knows JobID matches/== only)")
            op, value = m.groups()
            if op == "==":
                keep = lambda a: a.job_id == value  # noqa: E731
            else:
                pattern = re.compile(value)
                keep = lambda a: pattern.search(a.job_id) is not None  # noqa: E731
        index = await self._block(request, lambda: self.cluster.allocs_index(ns))
        stubs = [self._alloc_stub(a) for a in self.cluster.allocs.values()
                 if a.namespace == ns and keep(a)]
        return self._json(stubs, index)

    async def evaluations(self, request: web.Request) -> web.Response:
        ns, jid = self._ns(request), request.match_info["id"]
        self.cluster.job(ns, jid)
        evals = [e for e in self.cluster.evals if e["JobID"] == jid and e["Namespace"] == ns]
        return self._json(sorted(evals, key=lambda e: -e["CreateIndex"]))

    async def logs(self, request: web.Request) -> web.Response:
        """`GET /v1/client/fs/logs/:alloc?task=&type=stderr&plain=true&origin=end&offset=N`
        (plain=true: the text itself)."""
        a = self.cluster.allocs.get(request.match_info["id"])
        if a is None:
            raise APIError(404, "alloc not found")
        task, kind = request.query.get("task", ""), request.query.get("type", "")
        if not task or kind not in ("stdout", "stderr"):
            raise APIError(400, "must include task and type (stdout or stderr)")
        path = self.cluster.data_dir / "allocs" / a.id / "alloc" / "logs" / f"{task}.{kind}.0"
        data = path.read_bytes() if path.exists() else b""
        offset = int(request.query.get("offset", "0") or 0)
        data = data[-offset:] if request.query.get("origin") == "end" and offset else \
            data[offset:]
        return web.Response(body=data, content_type="text/plain", headers=self._headers())

    async def _block(self, request: web.Request, current: Any) -> int:
        """A blocking query: wait until the watched index passes `index`, or `wait`."""
        try:
            min_index = int(request.query.get("index", "0"))
        except ValueError:
            raise APIError(400, "Invalid index") from None
        wait = min(go_duration(request.query["wait"]) if "wait" in request.query else 300.0,
                   MAX_WAIT)
        deadline = time.monotonic() + wait
        cluster = self.cluster
        while min_index and current() <= min_index:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async with cluster.changed:
                try:
                    await asyncio.wait_for(cluster.changed.wait(), left)
                except asyncio.TimeoutError:
                    break
        return current()

    async def scale(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        bad = problems(body, "ScalingRequest", self.fields)
        target = (body or {}).get("Target") or {}
        if bad or not isinstance(body.get("Count"), int) or "Group" not in target:
            raise APIError(400, "; ".join(bad) or "Count and Target.Group are required")
        result = self.cluster.scale(self._ns(request), request.match_info["id"],
                                    target["Group"], body["Count"], body.get("Message", ""))
        await self.cluster.notify()
        return self._json(result, result["JobModifyIndex"])

    async def deployments(self, request: web.Request) -> web.Response:
        jid = request.match_info["id"]
        self.cluster.job(self._ns(request), jid)
        self.cluster.active_deployment(jid)  # settles finished ones
        return self._json([{
            "ID": d.id, "Namespace": self._ns(request), "JobID": d.job_id,
            "JobVersion": d.version, "Status": d.status, "StatusDescription": "",
            "CreateIndex": d.create_index, "ModifyIndex": d.create_index,
        } for d in self.cluster.deployments.values() if d.job_id == jid])

    async def get_alloc(self, request: web.Request) -> web.Response:
        a = self.cluster.allocs.get(request.match_info["id"])
        if a is None or a.namespace != self._ns(request):
            raise APIError(404, "alloc not found")
        return self._json(self._alloc(a), a.modify_index)

    async def stop_alloc(self, request: web.Request) -> web.Response:
        result = self.cluster.stop_alloc(request.match_info["id"])
        await self.cluster.notify()
        return self._json(result)

    # --- shapes ----------------------------------------------------------------------------

    def _alloc_stub(self, a: Alloc) -> dict[str, Any]:
        node = self.cluster.nodes[a.node_id]
        return {
            "ID": a.id, "EvalID": str(uuid.uuid5(uuid.NAMESPACE_OID, a.id)),
            "Name": f"{a.job_id}.{a.group}[{a.index}]", "Namespace": a.namespace,
            "NodeID": a.node_id, "NodeName": node["Name"], "JobID": a.job_id,
            "JobType": "service", "JobVersion": a.job_version, "TaskGroup": a.group,
            "DesiredStatus": a.desired, "DesiredDescription": a.description,
            "ClientStatus": a.client, "ClientDescription": a.description,
            "TaskStates": {"slot-server": {
                "State": a.task_state, "Failed": a.client == "failed",
                "Restarts": len(a.restarts), "StartedAt": None, "FinishedAt": None,
                "Events": list(a.events)}},
            "FollowupEvalID": "", "NextAllocation": a.next,
            "RescheduleTracker": {"Events": a.reschedule_events} if a.reschedule_events
            else None,
            "CreateIndex": a.create_index, "ModifyIndex": a.modify_index,
            "CreateTime": int(a.created * NS), "ModifyTime": time.time_ns(),
        }

    def _alloc(self, a: Alloc) -> dict[str, Any]:
        out = self._alloc_stub(a)
        for k in ("JobType", "JobVersion"):
            out.pop(k)
        port = {"Label": "slot", "Value": a.port, "To": 0, "HostIP": "127.0.0.1"}
        out.update({
            "PreviousAllocation": a.previous, "AllocModifyIndex": a.modify_index,
            "DesiredTransition": {"Migrate": a.migrating or None},
            "AllocatedResources": {"Shared": {
                "DiskMB": 0, "Ports": [port],
                "Networks": [{"Mode": "host", "IP": "127.0.0.1", "DynamicPorts": [
                    {"Label": "slot", "Value": a.port, "To": 0}]}]}},
        })
        return out


class Control:
    """`/_emulator/...`: what tests do to the cluster (on a port of its own)."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/_emulator/state", self.state)
        r.add_get("/_emulator/history", self.history)
        r.add_post("/_emulator/kill_alloc/{id}", self.kill_alloc)
        r.add_post("/_emulator/node_lost/{id}", self.node_lost)
        r.add_post("/_emulator/faults", self.faults)
        r.add_post("/_emulator/outage", self.outage)
        r.add_post("/_emulator/block_scaling/{job}", self.block_scaling)
        return app

    async def state(self, request: web.Request) -> web.Response:
        c = self.server.cluster
        return web.json_response({
            "jobs": [jid for (_, jid) in c.jobs],
            "allocs": [{"ID": a.id, "JobID": a.job_id, "TaskGroup": a.group,
                        "ClientStatus": a.client, "DesiredStatus": a.desired,
                        "NodeID": a.node_id, "pid": a.proc.pid if a.proc else None,
                        "running": a.proc is not None and a.proc.returncode is None}
                       for a in c.allocs.values()],
            "running_pids": sorted(c.running_pids()), "nodes": list(c.nodes),
            "api_up": self.server.api_up})

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response(self.server.cluster.history)

    async def kill_alloc(self, request: web.Request) -> web.Response:
        pid = self.server.cluster.kill_alloc(request.match_info["id"])
        return web.json_response({"pid": pid})

    async def node_lost(self, request: web.Request) -> web.Response:
        lost = self.server.cluster.node_lost(request.match_info["id"])
        await self.server.cluster.notify()
        return web.json_response({"lost": lost})

    async def faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        f = self.server.api.faults
        f.fail_next += list(body.get("fail_next", []))
        f.hang_next += int(body.get("hang_next", 0))
        f.hang_seconds = float(body.get("hang_seconds", f.hang_seconds))
        if "placement_delay" in body:
            self.server.cluster.placement_delay = float(body["placement_delay"])
        return web.json_response({"ok": True})

    async def outage(self, request: web.Request) -> web.Response:
        seconds = float((await request.json())["seconds"])
        asyncio.ensure_future(self.server.outage(seconds))
        return web.json_response({"ok": True})

    async def block_scaling(self, request: web.Request) -> web.Response:
        seconds = float((await request.json())["seconds"])
        return web.json_response(
            {"deployment": self.server.cluster.block_scaling(request.match_info["job"], seconds)})


class EmulatorServer:
    """The API on `port` and the control API on `control_port` (0: free ports), on this loop."""

    def __init__(self, data_dir: str | Path, *, token: str | None = None, nodes: int = 2,
                 placement_delay: float = 0.0, port: int = 0, control_port: int = 0,
                 **cluster: Any) -> None:
        self.cluster = Cluster(data_dir, nodes=nodes, placement_delay=placement_delay,
                               **cluster)
        self.api = NomadAPI(self.cluster, token)
        self.port, self.control_port = port, control_port
        self._api_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self.api_up = False
        self.outage_over = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    async def start(self) -> None:
        await self._open_api()
        self._control_runner = web.AppRunner(Control(self).app(), access_log=None)
        await self._control_runner.setup()
        site = web.TCPSite(self._control_runner, "127.0.0.1", self.control_port)
        await site.start()
        self.control_port = self._control_runner.addresses[0][1]

    async def _open_api(self) -> None:
        # An outage drops in-flight requests (blocking queries included) at once, as a
        # server going away does, instead of waiting for them to finish.
        self._api_runner = web.AppRunner(self.api.app(), access_log=None,
                                         handler_cancellation=True, shutdown_timeout=0.1)
        await self._api_runner.setup()
        site = web.TCPSite(self._api_runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._api_runner.addresses[0][1]
        self.api_up = True

    async def _close_api(self) -> None:
        self.api_up = False
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None

    async def outage(self, seconds: float) -> None:
        """The API is down for `seconds` (connections refused); allocations keep running."""
        self.outage_over.clear()
        self.cluster.record("outage_start", seconds=seconds)
        await self._close_api()
        await asyncio.sleep(seconds)
        await self._open_api()
        self.cluster.record("outage_end")
        self.outage_over.set()

    async def close(self) -> None:
        await self.cluster.close()
        await self._close_api()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
