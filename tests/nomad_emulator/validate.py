"""What a Nomad v1.9/v1.10 server does to a registered job before it accepts it: the `api`
package's Canonicalize (defaults for every field left out), then `structs.Job.Validate`.

Follows hashicorp/nomad v1.9.7 and v1.10.5 (the rules used here are the same in both):
`api/jobs.go` and `api/tasks.go` (Canonicalize, DefaultUpdateStrategy, the default restart,
reschedule, log and disk settings) and `nomad/structs/structs.go` (RestartPolicy.Validate,
ReschedulePolicy.Validate with viableAttempts, EphemeralDisk.Validate, LogConfig.Validate,
UpdateStrategy.Validate, Resources.MinResources, Task.Validate's KillTimeout checks, the
priority range of the default server config). Only the rules for fields a slot-server job can
carry are here; messages are Nomad's own wording, so a 400 reads as the real one does.
Durations are integer nanoseconds, as in the JSON API.
"""

from __future__ import annotations

import copy
from typing import Any

S = 1_000_000_000
MIN = 60 * S

# api.DefaultUpdateStrategy
UPDATE_DEFAULTS = {"Stagger": 30 * S, "MaxParallel": 1, "HealthCheck": "checks",
                   "MinHealthyTime": 10 * S, "HealthyDeadline": 5 * MIN,
                   "ProgressDeadline": 10 * MIN, "AutoRevert": False, "Canary": 0,
                   "AutoPromote": False}
# structs.DefaultServiceJobRestartPolicy
RESTART_DEFAULTS = {"Attempts": 2, "Interval": 30 * MIN, "Delay": 15 * S, "Mode": "fail"}
# api.NewDefaultReschedulePolicy("service")
RESCHEDULE_DEFAULTS = {"Attempts": 0, "Interval": 0, "Delay": 30 * S,
                       "DelayFunction": "exponential", "MaxDelay": 60 * MIN, "Unlimited": True}
LOG_DEFAULTS = {"MaxFiles": 10, "MaxFileSizeMB": 10}
DISK_DEFAULTS = {"SizeMB": 300, "Sticky": False, "Migrate": False}
RESOURCE_DEFAULTS = {"CPU": 100, "MemoryMB": 300}
KILL_TIMEOUT_DEFAULT = 5 * S
RESTART_MIN_INTERVAL = 5 * S
RESCHEDULE_MIN_INTERVAL = 15 * S
RESCHEDULE_MIN_DELAY = 5 * S
DELAY_FUNCTIONS = ("constant", "exponential", "fibonacci")
MAX_PRIORITY = 100  # the server's job_max_priority default


def go_duration(ns: int) -> str:
    """A nanosecond count as Go's time.Duration prints it (enough for messages)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < S:
        return f"{sign}{ns / 1e6:g}ms"
    h, rest = divmod(ns, 3600 * S)
    m, rest = divmod(rest, MIN)
    sec = f"{rest / S:g}s"
    return sign + (f"{h}h{m}m{sec}" if h else f"{m}m{sec}" if m else sec)


def _fill(obj: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj or {})
    for k, v in defaults.items():
        if out.get(k) is None:
            out[k] = v
    return out


def canonicalize(job: dict[str, Any]) -> dict[str, Any]:
    """The job with every default the `api` package fills in (a copy)."""
    job = copy.deepcopy(job)
    job.setdefault("Name", job.get("ID"))
    job.setdefault("Type", "service")
    if job.get("Priority") is None:
        job["Priority"] = 50
    job_update = job.get("Update")
    for tg in job.get("TaskGroups") or []:
        if tg.get("Count") is None:
            tg["Count"] = 1
        tg["EphemeralDisk"] = _fill(tg.get("EphemeralDisk"), DISK_DEFAULTS)
        update = tg.get("Update")
        if update is not None or (job_update and job_update.get("MaxParallel")):
            tg["Update"] = _fill({**(job_update or {}), **(update or {})}, UPDATE_DEFAULTS)
        tg["RestartPolicy"] = _fill(tg.get("RestartPolicy"), RESTART_DEFAULTS)
        tg["ReschedulePolicy"] = _fill(tg.get("ReschedulePolicy"), RESCHEDULE_DEFAULTS)
        for task in tg.get("Tasks") or []:
            task["LogConfig"] = _fill(task.get("LogConfig"), LOG_DEFAULTS)
            task["Resources"] = _fill(task.get("Resources"), RESOURCE_DEFAULTS)
            if not task.get("KillTimeout"):
                task["KillTimeout"] = KILL_TIMEOUT_DEFAULT
    return job


def restart_errors(r: dict[str, Any]) -> list[str]:
    out = []
    if r["Mode"] not in ("delay", "fail"):
        out.append(f"Unsupported restart mode: {r['Mode']!r}")
    if r["Attempts"] == 0 and r["Mode"] != "fail":
        out.append(f"Restart policy {r['Mode']!r} with 0 attempts is ambiguous")
    if r["Interval"] < RESTART_MIN_INTERVAL:
        out.append(f"Interval can not be less than {go_duration(RESTART_MIN_INTERVAL)} "
                   f"(got {go_duration(r['Interval'])})")
    if r["Attempts"] * r["Delay"] > r["Interval"]:
        out.append(f"Nomad can't restart the TaskGroup {r['Attempts']} times in an interval "
                   f"of {go_duration(r['Interval'])} with a delay of {go_duration(r['Delay'])}")
    return out


def reschedule_errors(r: dict[str, Any]) -> list[str]:
    if not (r["Attempts"] > 0 or r["Unlimited"]):
        return []  # disabled: nothing else is checked
    out = []
    if r["Attempts"] > 0:
        if r["Interval"] <= 0:
            out.append("Interval must be a non zero value if Attempts > 0")
        if r["Unlimited"]:
            out.append("If Attempts >0, Unlimited cannot also be set to true")
    pre_check = True
    if r["Delay"] < RESCHEDULE_MIN_DELAY:
        out.append(f"Delay cannot be less than {go_duration(RESCHEDULE_MIN_DELAY)} "
                   f"(got {go_duration(r['Delay'])})")
        pre_check = False
    if r["DelayFunction"] not in DELAY_FUNCTIONS:
        out.append(f"Invalid delay function {r['DelayFunction']!r}")
        pre_check = False
    if r["DelayFunction"] != "constant":
        if r["MaxDelay"] < RESCHEDULE_MIN_DELAY or r["MaxDelay"] < r["Delay"]:
            out.append("Max Delay cannot be less than Delay "
                       f"{go_duration(r['Delay'])} (got {go_duration(r['MaxDelay'])})")
            pre_check = False
    if not r["Unlimited"]:
        if r["Interval"] < RESCHEDULE_MIN_INTERVAL:
            out.append(f"Interval cannot be less than {go_duration(RESCHEDULE_MIN_INTERVAL)} "
                       f"(got {go_duration(r['Interval'])})")
        # viableAttempts, for the constant delay function our jobs use
        if pre_check and r["DelayFunction"] == "constant" and \
                r["Interval"] < r["Attempts"] * r["Delay"]:
            out.append(f"Nomad can only make {r['Interval'] // r['Delay']} attempts in "
                       f"{go_duration(r['Interval'])} with initial delay "
                       f"{go_duration(r['Delay'])} and delay function \"constant\"")
    return out


def update_errors(u: dict[str, Any]) -> list[str]:
    out = []
    if u["HealthCheck"] not in ("checks", "task_states", "manual"):
        out.append(f"Invalid health check given: {u['HealthCheck']!r}")
    if u["MaxParallel"] < 0:
        out.append(f"Max parallel can not be less than zero: {u['MaxParallel']} < 0")
    if u["MinHealthyTime"] >= u["HealthyDeadline"]:
        out.append("Minimum healthy time must be less than healthy deadline")
    if u["ProgressDeadline"] and u["HealthyDeadline"] >= u["ProgressDeadline"]:
        out.append("Healthy deadline must be less than progress deadline")
    if u["Stagger"] <= 0:
        out.append(f"Stagger must be greater than zero: {go_duration(u['Stagger'])}")
    return out


def task_errors(task: dict[str, Any], tg: dict[str, Any]) -> list[str]:
    out = []
    if not task.get("Name"):
        out.append("Missing task name")
    if not task.get("Driver"):
        out.append("Missing task driver")
    kill = task["KillTimeout"]
    update = tg.get("Update")
    if kill < 0:
        out.append("KillTimeout must be a positive value")
    elif update and update["ProgressDeadline"] > 0 and kill > update["ProgressDeadline"]:
        out.append(f"KillTimout ({go_duration(kill)}) longer than the group's "
                   f"ProgressDeadline ({go_duration(update['ProgressDeadline'])})")
    res = task["Resources"]
    if res["CPU"] < 1 and not res.get("Cores"):
        out.append(f"minimum CPU value is 1; got {res['CPU']}")
    if res["MemoryMB"] < 10:
        out.append(f"minimum MemoryMB value is 10; got {res['MemoryMB']}")
    logs = task["LogConfig"]
    if logs["MaxFiles"] < 1:
        out.append(f"minimum number of files is 1; got {logs['MaxFiles']}")
    if logs["MaxFileSizeMB"] < 1:
        out.append(f"minimum file size is 1MB; got {logs['MaxFileSizeMB']}")
    usage = logs["MaxFiles"] * logs["MaxFileSizeMB"]
    if tg["EphemeralDisk"]["SizeMB"] <= usage:
        out.append(f"log storage ({usage} MB) must be less than requested disk capacity "
                   f"({tg['EphemeralDisk']['SizeMB']} MB)")
    return out


def group_errors(tg: dict[str, Any]) -> list[str]:
    out = []
    if not tg.get("Name"):
        out.append("Missing task group name")
    if not isinstance(tg["Count"], int) or tg["Count"] < 0:
        out.append("Task group count can't be negative")
    if not tg.get("Tasks"):
        out.append("Missing tasks for task group")
    out += restart_errors(tg["RestartPolicy"])
    out += reschedule_errors(tg["ReschedulePolicy"])
    if tg["EphemeralDisk"]["SizeMB"] < 10:
        out.append(f"minimum DiskMB value is 10; got {tg['EphemeralDisk']['SizeMB']}")
    if tg.get("Update"):
        out += update_errors(tg["Update"])
    labels = [p.get("Label") for n in tg.get("Networks") or []
              for p in (n.get("DynamicPorts") or []) + (n.get("ReservedPorts") or [])]
    if len(set(labels)) != len(labels):
        out.append("Port label collision in the group's network")
    for task in tg.get("Tasks") or []:
        out += [f"Task {task.get('Name')!r}: {e}" for e in task_errors(task, tg)]
    return out


def job_errors(job: dict[str, Any]) -> list[str]:
    """Every reason Nomad would refuse the (canonicalized) job; empty: it is accepted."""
    out = []
    if not job.get("ID"):
        out.append("Missing job ID")
    elif " " in job["ID"]:
        out.append("Job ID contains a space")
    if job.get("Type") != "service":
        out.append(f"the emulator runs service jobs only, not {job.get('Type')!r}")
    if not 1 <= job["Priority"] <= MAX_PRIORITY:
        out.append(f"job priority must be between [1, {MAX_PRIORITY}]")
    if not job.get("Datacenters"):
        out.append("Missing job datacenters")
    groups = job.get("TaskGroups") or []
    if not groups:
        out.append("Missing job task groups")
    names = [g.get("Name") for g in groups]
    if len(set(names)) != len(names):
        out.append("Job task group names must be unique")
    for tg in groups:
        out += [f"Task group {tg.get('Name')!r} validation failed: {e}" for e in group_errors(tg)]
    return out


def validation_body(errors: list[str]) -> str:
    """Nomad's multierror text (the body of its 400)."""
    return (f"{len(errors)} error{'s' if len(errors) != 1 else ''} occurred:\n"
            + "".join(f"\t* {e}\n" for e in errors))
