"""Regenerate `go_api_fields.json`: the JSON field names of the Nomad Go `api` structs our job
spec uses, read from checkouts of hashicorp/nomad (the ground truth for the HTTP API's JSON).
Given several checkouts (the releases we support: v1.9.7 and v1.10.5), a struct's fields are
those every one of them has, so nothing we send is a field one supported release lacks.

    python -m tests.nomad_emulator.go_fields 'hashicorp/nomad v1.9.7 (<commit>), v1.10.5 (<commit>) api/' /path/to/nomad-1.9.7 /path/to/nomad-1.10.5 > tests/nomad_emulator/go_api_fields.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# struct name -> file under api/
STRUCTS = {
    "JobRegisterRequest": "jobs.go", "Job": "jobs.go", "UpdateStrategy": "jobs.go",
    "TaskGroup": "tasks.go", "Task": "tasks.go", "RestartPolicy": "tasks.go",
    "ReschedulePolicy": "tasks.go", "EphemeralDisk": "tasks.go", "LogConfig": "tasks.go",
    "Resources": "resources.go", "NetworkResource": "resources.go", "Port": "resources.go",
    "Constraint": "constraint.go", "ScalingRequest": "scaling.go",
    # What the emulator answers with (checked too, so its replies look like Nomad's).
    "JobRegisterResponse": "jobs.go", "JobDeregisterResponse": "jobs.go",
    "JobListStub": "jobs.go", "Allocation": "allocations.go",
    "AllocationListStub": "allocations.go", "AllocatedResources": "allocations.go",
    "AllocatedSharedResources": "allocations.go", "PortMapping": "allocations.go",
    "TaskState": "tasks.go", "Deployment": "deployments.go",
    "Evaluation": "evaluations.go", "AllocationMetric": "allocations.go",
}
_FIELD = re.compile(r"^\s+([A-Z]\w*)\s+[^\s`]+(?:\s+`([^`]*)`)?")
_JSON_TAG = re.compile(r'json:"([^",]*)')


def struct_fields(source: str, name: str) -> list[str]:
    """Exported fields of `type <name> struct {...}` as they appear in JSON."""
    lines = source[source.index(f"type {name} struct {{"):].splitlines()[1:]
    fields = []
    for line in lines:
        if line.startswith("}"):
            break
        m = _FIELD.match(line)
        if not m:
            continue
        tag = _JSON_TAG.search(m.group(2) or "")
        key = tag.group(1) if tag and tag.group(1) else m.group(1)
        if key != "-":
            fields.append(key)
    return fields


def main(source: str, *repos: str) -> None:
    out: dict[str, object] = {"_source": source}
    for name, file in STRUCTS.items():
        per_repo = [struct_fields(Path(repo, "api", file).read_text(), name) for repo in repos]
        out[name] = [f for f in per_repo[0] if all(f in other for other in per_repo[1:])]
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])


# --- checking JSON against the struct field names ------------------------------------------

FIELDS_FILE = Path(__file__).with_name("go_api_fields.json")
# Which struct a nested field holds (lists: each element).
NESTED = {
    "JobRegisterRequest": {"Job": "Job"},
    "Job": {"TaskGroups": "TaskGroup", "Update": "UpdateStrategy", "Constraints": "Constraint",
            "Reschedule": "ReschedulePolicy"},
    "TaskGroup": {"Tasks": "Task", "Networks": "NetworkResource",
                  "RestartPolicy": "RestartPolicy", "ReschedulePolicy": "ReschedulePolicy",
                  "Update": "UpdateStrategy", "EphemeralDisk": "EphemeralDisk",
                  "Constraints": "Constraint"},
    "Task": {"Resources": "Resources", "RestartPolicy": "RestartPolicy",
             "LogConfig": "LogConfig", "Constraints": "Constraint"},
    "Resources": {"Networks": "NetworkResource"},
    "NetworkResource": {"DynamicPorts": "Port", "ReservedPorts": "Port"},
    "Allocation": {"AllocatedResources": "AllocatedResources"},
    "AllocationListStub": {"AllocatedResources": "AllocatedResources"},
    "AllocatedResources": {"Shared": "AllocatedSharedResources"},
    "AllocatedSharedResources": {"Ports": "PortMapping", "Networks": "NetworkResource"},
    "Evaluation": {"FailedTGAllocs": "AllocationMetric{}"},
}
# time.Duration fields: integer nanoseconds in JSON (a string does not decode).
DURATIONS = {
    "RestartPolicy": ("Interval", "Delay"),
    "ReschedulePolicy": ("Interval", "Delay", "MaxDelay"),
    "UpdateStrategy": ("Stagger", "MinHealthyTime", "HealthyDeadline", "ProgressDeadline"),
    "Task": ("KillTimeout", "ShutdownDelay"),
}


def load_fields() -> dict[str, list[str]]:
    data = json.loads(FIELDS_FILE.read_text())
    data.pop("_source", None)
    return data


def problems(obj: object, struct: str, fields: dict[str, list[str]] | None = None,
             where: str = "") -> list[str]:
    """Every key of `obj` (recursively) that the Go struct `struct` has no field for, and
    every duration that is not an integer. Empty: Nomad decodes it as we mean it."""
    fields = fields or load_fields()
    where = where or struct
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    out = []
    known = set(fields[struct])
    for key, value in obj.items():
        if key not in known:
            out.append(f"{where}.{key}: no such field in api.{struct}")
            continue
        if key in DURATIONS.get(struct, ()) and value is not None and (
                not isinstance(value, int) or isinstance(value, bool)):
            out.append(f"{where}.{key}: a duration must be integer nanoseconds, got {value!r}")
        inner = NESTED.get(struct, {}).get(key)
        if inner is None or value is None:
            continue
        if inner.endswith("{}"):  # a map of string -> struct
            out += [p for k, item in value.items()
                    for p in problems(item, inner[:-2], fields, f"{where}.{key}[{k!r}]")]
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = f"{where}.{key}[{i}]" if isinstance(value, list) else f"{where}.{key}"
            out += problems(item, inner, fields, sub)
    return out
