"""Terminal tasks (kind `terminal`): the agent works in a shell; the task's own verifier
grades the final state of the slot it used.

Task folders come in three published layouts, told apart by what the folder holds (Harbor /
Endless Terminals `task.toml`, Terminal-Bench 1 `task.yaml`, and this project's bundled form:
see `rollout.tasks.terminal_formats`). `tasks.source` names a directory of task folders, one
task folder, `bundled` (ours), or a JSONL/JSON/parquet file of rows in the bundled form:

    task_id, instruction              what the agent is asked to do
    test_final_state                  the hidden pytest file (tests/test_final_state.py)
    image | dockerfile                an image reference | a Dockerfile's text or context dir
    files {path: text}, setup         workspace files, a script run before the agent
    solution                          a reference solution (for the gold policy)
    tools                             extra tools it needs (e.g. tmux: rollout/agent/toolbox.py;
                                      folder: environment/tools, one a line)
    solution_calls                    or a reference solution as tool calls [{name,
                                      arguments}] (folder: solution.json), e.g. keystrokes

A Dockerfile task's image label is `dockerfile:<context dir>` (built by the slot server's
image store, see sandbox_image/images/dockerfile.py); a row's inline Dockerfile is written to
the task cache first. Grading (`rollout.tasks.terminal_verify`): the task's `tests/test.sh`
and its reward file, its `run-tests.sh` and the pytest results it prints, or its pytest files
with the hardened runner; a run that did not really happen is a `GradingError`, never a 0.0.
The task's own timeouts replace `agent.wall_clock_budget` and `tasks.test_timeout`; its
memory and storage needs are checked against the slots before the run starts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import shlex
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from rollout.config_model import Str
from rollout.protocols import Sandbox
from rollout.tasks import terminal_formats as formats
from rollout.tasks.base import BaseTaskEnv
from rollout.tasks.config import BUNDLED, TaskSourceConfig
from rollout.tasks.grading import check_interpreter
from rollout.tasks.loader import LoadReport, RowError, required_str, shape_tasks
from rollout.tasks.registry import TaskKind, register
from rollout.tasks.terminal_verify import verify_pytest, verify_script
from rollout.types import SandboxError, SandboxSpec, Task, ToolCall, Verdict

log = logging.getLogger(__name__)

BUNDLED_TERMINAL = Path(__file__).parent / "bundled" / "terminal"
TEST_NAME = "test_final_state.py"
GOLD_SCRIPT = ".gold.sh"
GOLD_DIR = ".gold-solution"
DOCKERFILE_PREFIX = formats.DOCKERFILE_PREFIX

SYSTEM_PROMPT = """You are working in a Linux terminal. Your current working directory is the
workspace where the task's files are. You have three tools (a task may offer more; each
tool's description says how to use it):
- terminal(command, timeout?): run a shell command in the workspace (no network; its description says whether `cd` carries over);
- read_file(path): read a file (paths are relative to the workspace);
- write_file(path, content): create or overwrite a file.
Do what the task asks; an automatic check of the final state of the workspace decides whether
it is done. When you are finished, reply with a short summary and no tool call."""


def graded_tests(source: str, name: str = TEST_NAME) -> list[str]:
    """The test functions of a pytest file (see `terminal_formats.graded_tests`)."""
    return formats.graded_tests(source, name)


def _safe_relative(path: str) -> str:
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../") or "\x00" in path:
        raise RowError(f"file path {path!r} leaves the workspace")
    return norm


def row_to_terminal_task(row: Any, kind: str = "terminal", prefer_pytest: bool = False) -> Task:
    """A JSONL row (the bundled form's fields) as a Task."""
    if not isinstance(row, dict):
        raise RowError("row is not an object")
    task_id = required_str(row, "task_id")
    instruction = required_str(row, "instruction")
    test = row.get("test_final_state")
    if not isinstance(test, str) or not test.strip():
        raise RowError(f"missing test_final_state (the {TEST_NAME} source)")
    files = row.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise RowError("files must map paths to text")
    files = {_safe_relative(k): v for k, v in files.items()}
    for key in ("image", "dockerfile", "setup", "solution"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RowError(f"{key} must be a string")
    if row.get("image") and row.get("dockerfile"):
        raise RowError("give an image or a dockerfile, not both")
    image = row.get("image") or None
    if row.get("dockerfile"):
        context = Path(str(row["dockerfile"]))
        formats.check_dockerfile(context / "Dockerfile", "dockerfile")
        image = DOCKERFILE_PREFIX + str(context)
    data = formats.base_data(formats.BUNDLED_FORM)
    data.update(files=files, setup=row.get("setup"), solution=row.get("solution"),
                tests_dir={TEST_NAME: test})
    formats.choose_verifier(data, None, prefer_pytest, "reward")
    data.update(_tools_and_calls(row))
    return Task(task_id=task_id.strip(), kind=kind, instruction=instruction.strip(),
                image=image, data=data)


def _tools_and_calls(row: dict[str, Any]) -> dict[str, Any]:
    """A row's extra tools and keystroke-level reference solution, checked."""
    out: dict[str, Any] = {}
    tools = row.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise RowError("tools must be a list of tool names")
        from rollout.agent.toolbox import extra_tool_schemas

        try:
            extra_tool_schemas(tools)
        except ValueError as e:
            raise RowError(str(e)) from None
        out["tools"] = list(tools)
    calls = row.get("solution_calls")
    if calls:
        if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str)
                and isinstance(c.get("arguments", {}), dict) for c in calls):
            raise RowError("solution_calls must be a list of {name, arguments}")
        out["solution_calls"] = calls
    return out


def read_task_folder(folder: Path) -> dict[str, Any]:
    """A bundled-form task folder as a JSONL row with the same fields (see the module doc)."""
    fields = formats.read_folder(folder)
    data = fields["data"]
    row: dict[str, Any] = {"task_id": fields["task_id"], "instruction": fields["instruction"],
                           "test_final_state": data["tests_dir"].get(TEST_NAME),
                           "setup": data["setup"], "solution": data["solution"]}
    image = fields["image"]
    if image and image.startswith(DOCKERFILE_PREFIX):
        row["dockerfile"] = image.removeprefix(DOCKERFILE_PREFIX)
    elif image:
        row["image"] = image
    if data["files"]:
        row["files"] = data["files"]
    row.update(_folder_tools_and_calls(folder))
    return row


def _inline_dockerfile(row: dict[str, Any], cache: Path) -> dict[str, Any]:
    """A row's Dockerfile text becomes a build context dir in the task cache (by content)."""
    text = row.get("dockerfile")
    if not isinstance(text, str) or Path(text).is_dir():
        return row
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    ctx = cache / "dockerfiles" / digest
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(text)
    return {**row, "dockerfile": str(ctx)}


def _folder_tools_and_calls(folder: Path) -> dict[str, Any]:
    """A folder's extra tools (environment/tools) and keystroke-level reference solution
    (solution.json), as row fields."""
    row: dict[str, Any] = {}
    tools = folder / "environment" / "tools"
    if tools.is_file() and tools.read_text(encoding="utf-8").split():
        row["tools"] = tools.read_text(encoding="utf-8").split()
    calls = folder / "solution.json"
    if calls.is_file():
        import json

        try:
            row["solution_calls"] = json.loads(calls.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            row["solution_calls"] = f"solution.json does not parse: {e}"  # refused as a row
    return row


def _folder_task(folder: Path, cfg: TaskSourceConfig) -> Task:
    fields = formats.read_folder(folder, prefer_pytest=cfg.verifier == "pytest")
    data = fields["data"]
    data.update(_tools_and_calls(_folder_tools_and_calls(folder)))
    return Task(task_id=fields["task_id"], kind=cfg.kind, instruction=fields["instruction"],
                image=fields["image"], data=data)


def _task_folders(path: Path) -> list[Path]:
    """`path` itself when it is a task folder, else its sub-folders (hidden ones aside: .git,
    caches). A sub-folder in no known layout is skipped and counted like a broken task."""
    if formats.layout_of(path) is not None:
        return [path]
    return [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def load_terminal(cfg: TaskSourceConfig) -> tuple[list[Task], LoadReport]:
    """Tasks from a task folder, a directory of task folders ('bundled': ours) in any
    supported layout, or a JSONL/JSON/parquet file of bundled-form rows. A folder or row that
    cannot run is skipped, logged with its reason and counted in the report."""
    path = BUNDLED_TERMINAL if cfg.source == BUNDLED else Path(cfg.source).expanduser()
    report = LoadReport()
    tasks: list[Task] = []
    seen: set[str] = set()

    def keep(where: str, make: Any) -> None:
        try:
            task = make()
        except RowError as e:
            report.skipped[str(e)] += 1
            log.warning("%s: skipped task: %s", where, e)
            return
        if task.task_id in seen:
            report.skipped["duplicate task_id"] += 1
            log.warning("%s: skipped task: duplicate task_id %s", where, task.task_id)
            return
        seen.add(task.task_id)
        tasks.append(task)

    if path.is_dir():
        for folder in _task_folders(path):
            keep(str(folder), lambda f=folder: _folder_task(f, cfg))
    elif path.is_file():
        from rollout.tasks.loader import _read_rows

        cache = cfg.cache_path.parent / "terminal"
        prefer = cfg.verifier == "pytest"
        for where, row in list(_read_rows(cfg, report)):
            keep(where, lambda r=row: row_to_terminal_task(
                _inline_dockerfile(r, cache) if isinstance(r, dict) else r, cfg.kind, prefer))
    else:
        raise FileNotFoundError(f"task source {cfg.source!r} for kind terminal is neither a "
                                "task folder, a directory of task folders nor a "
                                "JSONL/JSON/parquet file")
    _warn_network_verifiers(tasks, cfg)
    return shape_tasks(tasks, cfg, report)


# What a verifier script that fetches its tools looks like (the Harbor template and Endless
# Terminals' test.sh install uv with curl, then pytest with it).
_FETCHERS = ("curl ", "wget ", "apt-get ", "apt ", "pip install", "uv pip", "uvx ", "astral.sh")


def _warn_network_verifiers(tasks: list[Task], cfg: TaskSourceConfig) -> None:
    """Once per load: script verifiers that fetch tools cannot do so on an offline slot, and
    then write a 0 reward (the script cannot tell a missing tool from a failed test)."""
    fetching = [t.task_id for t in tasks if t.data.get("verifier") in ("reward", "tb1")
                and any(f in t.data["tests_dir"].get(t.data["verifier_script"], "")
                        for f in _FETCHERS)]
    if fetching:
        log.warning("%d task(s) (e.g. %s) have a verifier script that downloads its tools "
                    "(curl/apt-get/pip/uv): with sandbox.network=false it fails and scores 0. "
                    "Give the slots network, put the tools in the image, or grade with the "
                    "tasks' pytest files: tasks.verifier=pytest", len(fetching), fetching[0])


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class TerminalSource(TaskSourceConfig):
    """The terminal kind's settings (`tasks.*` with `tasks.kind=terminal`)."""

    kind: Str = "terminal"
    test_timeout: Annotated[float, Field(gt=0)] = 120.0  # a task's own verifier timeout wins
    pytest_plugin_autoload: bool = True
    # "auto" grades with the task's own verifier script where it has one (Harbor's
    # tests/test.sh, Terminal-Bench's run-tests.sh), else its pytest files; "pytest" prefers
    # the pytest files (e.g. offline slots, when the script downloads tools).
    verifier: Literal["auto", "pytest"] = "auto"
    # The memory and storage a task.toml asks for must fit the slots (checked before the
    # run starts); false ignores them.
    task_resources: bool = True

    def lease_seconds(self) -> float:
        return self.prepare_timeout + self.test_timeout  # a verifier run is not retried here


class TerminalEnv(BaseTaskEnv):
    """`rollout.protocols.TaskEnv` for terminal tasks (the built-in tools, a slot of the
    task's image)."""

    def __init__(self, cfg: TaskSourceConfig | None = None) -> None:
        self.cfg = cfg or TaskSourceConfig(kind="terminal")

    def messages(self, task: Task) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": task.instruction}]

    def sandbox_spec(self, task: Task) -> SandboxSpec:
        if not self.cfg.task_resources:
            return SandboxSpec(image=task.image)
        return SandboxSpec(image=task.image, memory_mb=task.data.get("memory_mb"),
                           disk_mb=task.data.get("disk_mb"))

    def wall_clock_budget(self, task: Task) -> float | None:
        """The task's own agent timeout (task.toml / task.yaml); None: agent.wall_clock_budget."""
        return task.data.get("agent_timeout")

    def verifier_timeout(self, task: Task) -> float:
        return task.data.get("verifier_timeout") or self.cfg.test_timeout

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        if task.data["files"]:
            await sandbox.upload_archive(_tar(task.data["files"]))
        if task.data.get("setup"):
            res = await sandbox.exec(task.data["setup"], timeout=self.cfg.prepare_timeout)
            if not res.ok:
                raise SandboxError(f"cannot prepare {task.task_id}: its setup script failed "
                                   f"(exit {res.exit_code}): {(res.stderr or res.stdout)[-300:]}")

    async def verify(self, task: Task, sandbox: Sandbox, *,
                     transcript: Sequence[dict[str, Any]] = ()) -> Verdict:
        timeout = self.verifier_timeout(task)
        if task.data["verifier"] == "pytest":
            await check_interpreter(sandbox, self.cfg.python)  # graded in the agent's slot
            verdict = await verify_pytest(task, sandbox, python=self.cfg.python,
                                          plugin_autoload=self.cfg.pytest_plugin_autoload,
                                          timeout=timeout)
        else:
            verdict = await verify_script(task, sandbox, timeout=timeout)
        log.info("graded %s: score %g (%s)", task.task_id, verdict.score,
                 verdict.details["reason"])
        return verdict

    def reference_solution(self, task: Task) -> list[ToolCall]:
        data = task.data
        script = data.get("solution")
        if data.get("solution_unrunnable"):
            raise ValueError(f"task error: {task.task_id}: {data['solution_unrunnable']}")
        calls = data.get("solution_calls")
        if calls:  # keystrokes, for a task only an interactive terminal solves
            return [ToolCall(c["name"], dict(c.get("arguments") or {}), f"gold-{i}")
                    for i, c in enumerate(calls, 1)]
        if not script:
            raise ValueError(f"task error: terminal task {task.task_id} has no reference solution")
        budget = data.get("agent_timeout") or 600.0
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (data.get("solution_env") or {}).items())
        if data["format"] == formats.HARBOR:
            # As Harbor's oracle: solution/ at /solution, solve.sh run from the working dir
            # (a read-only root, the bundled default image: from the workspace instead).
            files = {"solve.sh": script, **data["solution_files"]}
            calls = [ToolCall("write_file", {"path": f"{GOLD_DIR}/{name}", "content": text},
                              f"gold-{i}") for i, (name, text) in enumerate(sorted(files.items()), 1)]
            run = (f"S=/solution; {{ rm -rf /solution && mkdir -p /solution && "
                   f"cp -R {GOLD_DIR}/. /solution/; }} 2>/dev/null || S=\"$PWD/{GOLD_DIR}\"; "
                   f"chmod +x \"$S/solve.sh\"; {env} \"$S/solve.sh\"; rc=$?; "
                   f"rm -rf {GOLD_DIR}; exit $rc")
            return calls + [ToolCall("terminal", {"command": run, "timeout": budget},
                                     f"gold-{len(calls) + 1}")]
        # A script with its own interpreter line runs with it (Terminal-Bench's `#!/bin/bash`).
        runner = f"chmod +x {GOLD_SCRIPT}; ./{GOLD_SCRIPT}" if script.startswith("#!") \
            else f"sh {GOLD_SCRIPT}"
        command = f"{env} {runner}; rc=$?; rm -f {GOLD_SCRIPT}; exit $rc".strip()
        return [ToolCall("write_file", {"path": GOLD_SCRIPT, "content": script}, "gold-1"),
                ToolCall("terminal", {"command": command, "timeout": budget}, "gold-2")]


register(TaskKind("terminal", TerminalEnv, load_terminal, settings=TerminalSource))
