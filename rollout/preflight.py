"""Checks a launch runs before it starts Ray or writes a run dir.

Each check either passes or raises `PreflightError` with one line a user can act on: what is
wrong, and what to do. Mistakes found here cost a second, not a Ray start and an empty run.
"""

from __future__ import annotations

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


def check_tasks(tasks: list[Any], source: str, skipped: dict[str, int] | None = None) -> None:
    if not tasks:
        why = " (every row was skipped or filtered out; see the warnings above)"
        if skipped:  # one task folder, say: its own reason is the line to act on
            reason, n = max(skipped.items(), key=lambda kv: kv[1])
            rest = sum(skipped.values()) - n
            why = f": {n} skipped, {reason}" + (f" (and {rest} more)" if rest else "")
        raise PreflightError(f"no tasks loaded from tasks.source={source!r}{why}")


def check_sandbox_specs(tasks: list[Any], envs: Any, limits: Any) -> None:
    """Every task's slot needs (`TaskEnv.sandbox_spec`: a kind's, or a task's own from its
    task.toml) fit in the configured slots."""
    from rollout.tasks.base import sandbox_spec_for

    worst: dict[str, tuple[int, str, int]] = {}  # key -> (most needed, a task needing it, count)
    own = False  # a task's own needs (task.toml), which tasks.task_resources=false ignores
    for task in tasks:
        env = envs.for_task(task)
        spec = sandbox_spec_for(env, task)
        if spec is None:
            continue
        for need, have, key in ((spec.memory_mb, limits.memory_mb, "memory_mb"),
                                (spec.disk_mb, limits.disk_mb, "disk_mb")):
            if need is not None and have is not None and have < need:
                most, who, n = worst.get(key, (0, "", 0))
                worst[key] = (max(most, need), who if most >= need else task.task_id, n + 1)
                own = own or hasattr(getattr(env, "cfg", None), "task_resources")
    for key, (most, who, n) in sorted(worst.items()):
        have = getattr(limits, key)
        hint = (" (or tasks.task_resources=false to ignore what task.toml files ask for)"
                if own else "")
        raise PreflightError(f"{n} task(s) need slots with more than sandbox.{key}={have} MB "
                             f"(task {who} asks for {most}): raise sandbox.{key}{hint}")


def check_task_budgets(tasks: list[Any], envs: Any, cfg: Any) -> None:
    """Tasks with their own agent or verifier timeouts (task.toml / task.yaml) may hold a
    slot longer than the config says; the backend must keep its sandboxes that long."""
    from rollout.config import LEASE_MARGIN
    from rollout.tasks.base import task_budget

    worst = 0.0
    for task in tasks:
        env = envs.for_task(task)
        verifier = getattr(env, "verifier_timeout", None)
        if not callable(verifier):
            continue
        source = env.cfg
        agent = task_budget(env, task) or cfg.agent.wall_clock_budget
        worst = max(worst, agent + source.prepare_timeout + verifier(task) + LEASE_MARGIN)
    if worst:
        try:
            cfg.backend.check_lease_budget(worst)
        except ValueError as e:
            raise PreflightError(f"{e} (the tasks' own timeouts from task.toml / task.yaml "
                                 "count)") from None


def check_backend(backend: Any) -> None:
    """A remote backend's own check (its control plane answers, with the configured
    credentials): `BackendConfig.preflight()` where a backend defines one."""
    check = getattr(backend, "preflight", None)
    problem = check() if check is not None else None
    if problem:
        raise PreflightError(problem)
