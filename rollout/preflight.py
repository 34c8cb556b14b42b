"""Checks a launch runs before it starts Ray or writes a run dir.

Each check either passes or raises `PreflightError` with one line a user can act on: what is
wrong, and what to do. Mistakes found here cost a second, not a Ray start and an empty run.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
from typing import Any

# A failed connect to a local port is immediate; a remote host that drops packets is not.
PROBE_TIMEOUT = 5.0


class PreflightError(RuntimeError):
    """A launch cannot work as configured; the message is one line."""


def probe_http(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if an HTTP server answers at `url` (any status), else why not, in words."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable, whatever it thinks of this path
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(reason, socket.gaierror):
            return f"unknown host ({reason.strerror or reason})"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g}s"
        return str(reason)
    except (TimeoutError, socket.timeout):
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError) as e:
        return str(e)


def check_policy(policy: Any) -> None:
    """An endpoint policy (one launch does not start itself) must be reachable."""
    if policy.type in ("gold", "scripted", "simulated") or not policy.base_url:
        return  # replayed locally, or the embedded server launch starts itself
    path = "/health" if policy.type == "sglang" else "/v1/models"
    url = policy.base_url.rstrip("/") + path
    problem = probe_http(url)
    if problem:
        raise PreflightError(
            f"the policy server at policy.base_url={policy.base_url} is not reachable "
            f"(GET {path}: {problem}); start it or fix policy.base_url")


def check_trainer(trainer: Any) -> None:
    """With trainer=atropos, something must listen at trainer.url (the trainer itself may
    register later: the run waits for that, visibly)."""
    if trainer.type != "atropos":
        return
    problem = probe_http(trainer.url.rstrip("/") + "/")
    if problem:
        raise PreflightError(
            f"the Atropos API at trainer.url={trainer.url} is not reachable ({problem}); "
            "start it first (`run-api`) or fix trainer.url")


def check_isolation(backend: str, isolation: str) -> None:
    """The local backend's slot servers need bubblewrap unless isolation=none is asked for.
    (`auto` would otherwise run every command unsandboxed, with a warning no one reads.)"""
    if backend != "local" or isolation == "none":
        return
    if shutil.which("bwrap") is None:
        raise PreflightError(
            "bubblewrap (bwrap) is not installed, so commands cannot be sandboxed: "
            "`apt-get install bubblewrap` (or set sandbox.isolation=none to run them "
            "unisolated, which is unsafe)")


def check_tasks(tasks: list[Any], source: str) -> None:
    if not tasks:
        raise PreflightError(f"no tasks loaded from tasks.source={source!r} "
                             "(every row was skipped or filtered out; see the warnings above)")


def check_sandbox_specs(tasks: list[Any], envs: Any, limits: Any) -> None:
    """Every task kind's slot needs (`TaskEnv.sandbox_spec`) fit in the configured slots."""
    from rollout.tasks.base import sandbox_spec_for

    first: dict[str, Any] = {}
    for task in tasks:
        first.setdefault(task.kind, task)
    for kind, task in sorted(first.items()):
        spec = sandbox_spec_for(envs.for_task(task), task)
        if spec is None:
            continue
        for need, have, key in ((spec.memory_mb, limits.memory_mb, "memory_mb"),
                                (spec.disk_mb, limits.disk_mb, "disk_mb")):
            if need is not None and have is not None and have < need:
                raise PreflightError(f"tasks of kind {kind} need slots with at least {need} MB "
                                     f"({key}); sandbox.{key}={have} is less (raise it)")


# Sources named in place of an image that need no registry: archives, layouts, Dockerfiles.
_LOCAL_PREFIXES = ("oci:", "oci-archive:", "docker-archive:", "dockerfile:")


def check_images(tasks: list[Any], backend: str, images: Any) -> None:
    """Every image the tasks name is one the slot servers can run as configured: a label in
    `sandbox.images`, `host`, an image in the store (`sha256:`) or a local archive, layout or
    Dockerfile folder that exists. Anything else would be looked up in a registry by every
    trajectory at run time (seconds each, then a sandbox error). Modal maps its own images."""
    if backend == "modal":
        return
    named = sorted({t.image for t in tasks if getattr(t, "image", None)})
    missing = [label for label in named if not _resolvable(label, images)]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if len(missing) > 1 else ""
        raise PreflightError(
            f"task image {missing[0]!r}{more} is not in sandbox.images and is no local image: "
            f"add sandbox.images.\"{missing[0]}\"={{source: ...}} (a registry reference, an "
            "OCI layout or archive path, or host)")


def _resolvable(label: str, images: Any) -> bool:
    if label in (images or {}) or label == "host" or label.startswith("sha256:"):
        return True
    path = label
    for prefix in _LOCAL_PREFIXES:
        if label.startswith(prefix):
            path = label[len(prefix):]
            break
    return path.startswith(("/", ".", "~")) and os.path.exists(os.path.expanduser(path)) or (
        path != label and os.path.exists(os.path.expanduser(path)))
