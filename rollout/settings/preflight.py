"""Checks a launch runs before it starts Ray or writes a run dir.

Each check either passes or raises `PreflightError` with one line a user can act on: what is
wrong, and what to do. Mistakes found here cost a second, not a Ray start and an empty run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from rollout.retry import probe_http


class PreflightError(RuntimeError):
    """A launch cannot work as configured; the message is one line."""


def check_policy(policy: Any) -> None:
    """A policy server (one launch does not start itself) must be reachable: its type's
    `probe_path` (rollout/policy/registry.py) at policy.base_url answers."""
    path = policy.kind.probe_path
    if path is None or not policy.base_url:
        return  # no server (replayed locally), or one launch starts itself
    url = policy.base_url.rstrip("/") + path
    problem = probe_http(url)
    if problem:
        raise PreflightError(
            f"the policy server at policy.base_url={policy.base_url} is not reachable "
            f"(GET {path}: {problem}); start it or fix policy.base_url")


def check_trainer(trainer: Any) -> None:
    """The trainer type's own check (`TrainerConfig.preflight`: with trainer=atropos,
    something must listen at trainer.url)."""
    problem = trainer.preflight()
    if problem:
        raise PreflightError(problem)


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
    from rollout.settings.config import LEASE_MARGIN
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


# --- the policy's tokenizer ------------------------------------------------------------------

_PROBE_TOOL = {"type": "function", "function": {
    "name": "terminal", "description": "Run a shell command.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                   "required": ["command"]}}}


# Any one of these makes a directory a Hugging Face tokenizer to try.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_tokenizer(policy: Any, envs: Any = None) -> None:
    """The policy client every worker builds must build here first: the tokenizer loads
    offline, its chat template renders a prompt with tools and the suffix after a tool call
    (what every turn needs), and the client accepts the config. Otherwise each worker dies
    with the same error, one after another, and the run ends with nothing done.

    `policy.tokenizer=embedded` is the bundled model's own tokenizer, filled in at start."""
    if policy.tokenizer == "embedded":
        return
    from rollout.policy import make_policy
    from rollout.policy.template import ChatRenderer, load_tokenizer

    check_tokenizer_files(policy)
    name = f"policy.tokenizer={policy.tokenizer}"
    try:
        tokenizer = load_tokenizer(policy.tokenizer, policy.chat_template)
    except Exception as e:
        if e.__cause__ is None:  # it loaded, and says what is missing (a chat template)
            raise PreflightError(f"{name} cannot serve policy.type={policy.type}: "
                                 f"{_one_line(e)}") from None
        raise PreflightError(f"{name} cannot be loaded for policy.type={policy.type} "
                             f"({_one_line(e.__cause__, 160)}); {_TOKENIZER_FIX}") from None
    try:
        renderer = ChatRenderer(tokenizer, policy.template_kwargs, policy.tool_prompt)
        history = [{"role": "user", "content": "List the files."}]
        renderer.prompt_ids(history, [_PROBE_TOOL])
        renderer.tool_suffix_ids(history, [_PROBE_TOOL],
                                 [{"role": "tool", "content": "a.txt", "tool_call_id": "c0"}], [])
    except Exception as e:
        raise PreflightError(f"the chat template of {name} cannot render a tool-calling turn "
                             f"({_one_line(e)}); set policy.chat_template") from None
    if policy.kind.serve is not None and not policy.base_url:
        return  # the server launch starts gives the client its URL; nothing more to build
    try:
        make_policy(policy, envs)
    except Exception as e:
        raise PreflightError(f"policy.type={policy.type} cannot start with this config: "
                             f"{_one_line(e)}") from None


_TOKENIZER_FIX = "set it to the model's tokenizer dir (tokenizer.json, tokenizer_config.json)"


def check_tokenizer_files(policy: Any) -> None:
    """The common tokenizer mistakes, found without importing transformers (seconds)."""
    if policy.tokenizer == "embedded":
        return
    name = f"policy.tokenizer={policy.tokenizer}"
    path = Path(policy.tokenizer).expanduser()
    if policy.tokenizer.startswith(("/", ".", "~")) and not path.exists():
        raise PreflightError(f"{name} does not exist; {_TOKENIZER_FIX}")
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise PreflightError(f"{name} holds no tokenizer files; {_TOKENIZER_FIX}")


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (some libraries' span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- the slot server's interpreter -----------------------------------------------------------

# What `python -m sandbox_image` imports before it can answer (sandbox_image's own deps).
SERVER_IMPORTS = ("aiohttp", "pydantic", "sandbox_image")


def check_server_python(python: str, key: str, pythonpath: str | None = None,
                        timeout: float = 20.0) -> None:
    """The interpreter that runs the slot servers must have their dependencies; otherwise
    every host dies at import and the run waits for hosts that never answer. (The imports
    take well under a second; the timeout is for a machine under heavy load.)"""
    import os
    import subprocess
    import sys

    if python == sys.executable:
        return  # this interpreter: it is running the project already
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = f"import {', '.join(SERVER_IMPORTS)}"
    try:
        proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise PreflightError(f"{key}={python} does not exist; set it to a Python 3.11+ "
                             "interpreter that has the project installed") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PreflightError(f"{key}={python} cannot run ({e}); set it to a Python 3.11+ "
                             "interpreter that has the project installed") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        raise PreflightError(
            f"{key}={python} cannot run the slot server ({why}); install the project there "
            "(`pip install rollout-cluster`, or at least aiohttp and pydantic) or point "
            f"{key} at an interpreter that has it")


# Sources named in place of an image that need no registry: archives, layouts, Dockerfiles.
_LOCAL_PREFIXES = ("oci:", "oci-archive:", "docker-archive:", "dockerfile:")


def check_images(tasks: list[Any], backend: str, images: Any,
                 sources: dict[str, str] | None = None) -> None:
    """Every image the tasks name is one the slot servers can run as configured: a label in
    `sandbox.images` or `sandbox.image_sources`, `host`, an image in the store (`sha256:`) or a
    local archive, layout or Dockerfile folder that exists. Anything else would be looked up in a registry by every
    trajectory at run time (seconds each, then a sandbox error). Modal maps its own images."""
    if backend == "modal":
        return
    named = sorted({t.image for t in tasks if getattr(t, "image", None)})
    missing = [label for label in named
               if not _resolvable(label, images) and label not in (sources or {})]
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
