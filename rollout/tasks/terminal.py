"""Terminal tasks (kind `terminal`, the shape of the "Endless Terminals" dataset): the agent
works in a shell; a hidden pytest file checks the final state of the slot.

A task is a folder (or the same fields as a JSONL row):

    <task>/instruction.md               what the agent is asked to do     (row: instruction)
    <task>/environment/Dockerfile       the image, built from the subset   (row: dockerfile)
    <task>/environment/image            or an image reference, one line    (row: image)
    <task>/environment/workspace/...    files put into the workspace       (row: files {path: text})
    <task>/environment/setup.sh         run in the slot before the agent   (row: setup)
    <task>/tests/test_final_state.py    the hidden test                    (row: test_final_state)
    <task>/solution.sh                  a reference solution (for gold)    (row: solution)

Neither an environment image nor a Dockerfile: the run's default image. A Dockerfile task's
image label is `dockerfile:<folder>/environment` (built by the slot server's image store,
see sandbox_image/images/dockerfile.py); a row's inline Dockerfile is written to the task
cache first. The test file stays on the worker: it is written into the slot only when
grading starts (a fresh, randomly named directory), run with the hardened pytest runner of
`rollout.tasks.grading`, and every test function in it must be reported PASSED (a missing
one fails). A run that did not really happen is a `GradingError`, never a 0.0.
"""

from __future__ import annotations

import ast
import hashlib
import io
import logging
import posixpath
import secrets
import shlex
import tarfile
from pathlib import Path
from typing import Any

from rollout.protocols import Sandbox
from rollout.tasks.base import BaseTaskEnv
from rollout.tasks.config import BUNDLED, TaskSourceConfig
from rollout.tasks.grading import check_interpreter, grade, pytest_run
from rollout.tasks.loader import LoadReport, RowError, required_str, shape_tasks
from rollout.tasks.registry import TaskKind, register
from rollout.types import SandboxError, Task, ToolCall, Verdict

log = logging.getLogger(__name__)

BUNDLED_TERMINAL = Path(__file__).parent / "bundled" / "terminal"
TEST_NAME = "test_final_state.py"
GOLD_SCRIPT = ".gold.sh"
DOCKERFILE_PREFIX = "dockerfile:"

SYSTEM_PROMPT = """You are working in a Linux terminal. Your current working directory is the
workspace where the task's files are. You have three tools:
- terminal(command, timeout?): run a shell command in the workspace (no network; its description says whether `cd` carries over);
- read_file(path): read a file (paths are relative to the workspace);
- write_file(path, content): create or overwrite a file.
Do what the task asks; an automatic check of the final state of the workspace decides whether
it is done. When you are finished, reply with a short summary and no tool call."""


def graded_tests(source: str) -> list[str]:
    """The node ids (relative to the test file) of the test functions in a pytest file:
    module-level `test_*` functions and `test_*` methods of `Test*` classes. Raises RowError
    for a file that does not parse, has no test, or uses parametrize (ids not known ahead)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise RowError(f"{TEST_NAME} does not parse (line {e.lineno})") from None
    if "parametrize" in source:
        raise RowError(f"{TEST_NAME} uses parametrize (not supported: every test id must be "
                       "known before the run)")
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names += [f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and f.name.startswith("test")]
    if not names:
        raise RowError(f"{TEST_NAME} has no test functions")
    return names


def _safe_relative(path: str) -> str:
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../") or "\x00" in path:
        raise RowError(f"file path {path!r} leaves the workspace")
    return norm


def row_to_terminal_task(row: Any, kind: str = "terminal") -> Task:
    """A JSONL row (or a folder read into the same fields) as a Task."""
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
        image = DOCKERFILE_PREFIX + str(row["dockerfile"])
    data = {"test": test, "tests": graded_tests(test), "files": files,
            "setup": row.get("setup"), "solution": row.get("solution")}
    return Task(task_id=task_id.strip(), kind=kind, instruction=instruction.strip(),
                image=image, data=data)


def read_task_folder(folder: Path) -> dict[str, Any]:
    """A task folder's fields as a row (see the module doc)."""
    env = folder / "environment"

    def text(path: Path) -> str | None:
        return path.read_text(encoding="utf-8") if path.is_file() else None

    row: dict[str, Any] = {"task_id": folder.name, "instruction": text(folder / "instruction.md"),
                           "test_final_state": text(folder / "tests" / TEST_NAME),
                           "setup": text(env / "setup.sh"), "solution": text(folder / "solution.sh")}
    image = text(env / "image")
    if image and image.strip():
        row["image"] = image.strip()
    if (env / "Dockerfile").is_file():
        row["dockerfile"] = str(env.resolve())
    ws = env / "workspace"
    if ws.is_dir():
        row["files"] = {str(p.relative_to(ws)): p.read_text(encoding="utf-8")
                        for p in sorted(ws.rglob("*")) if p.is_file()}
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


def load_terminal(cfg: TaskSourceConfig) -> tuple[list[Task], LoadReport]:
    """Tasks from a directory of task folders ('bundled': ours), or a JSONL/JSON/parquet file
    of rows with the same fields."""
    path = BUNDLED_TERMINAL if cfg.source == BUNDLED else Path(cfg.source).expanduser()
    report = LoadReport()
    located: list[tuple[str, Any]] = []
    if path.is_dir():
        located = [(str(d), read_task_folder(d)) for d in sorted(path.iterdir())
                   if d.is_dir() and (d / "instruction.md").is_file()]
    elif path.is_file():
        from rollout.tasks.loader import _read_rows

        located = list(_read_rows(cfg, report))
    else:
        raise FileNotFoundError(f"task source {cfg.source!r} for kind terminal is neither a "
                                "directory of task folders nor a JSONL/JSON/parquet file")
    tasks: list[Task] = []
    seen: set[str] = set()
    for where, row in located:
        try:
            if isinstance(row, dict):
                row = _inline_dockerfile(row, cfg.cache_path.parent / "terminal")
            task = row_to_terminal_task(row, cfg.kind)
        except RowError as e:
            report.skipped[str(e)] += 1
            log.warning("%s: skipped task: %s", where, e)
            continue
        if task.task_id in seen:
            report.skipped["duplicate task_id"] += 1
            continue
        seen.add(task.task_id)
        tasks.append(task)
    return shape_tasks(tasks, cfg, report)


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class TerminalEnv(BaseTaskEnv):
    """`rollout.protocols.TaskEnv` for terminal tasks (the built-in tools, a slot of the
    task's image)."""

    def __init__(self, cfg: TaskSourceConfig | None = None) -> None:
        self.cfg = cfg or TaskSourceConfig(kind="terminal")

    def messages(self, task: Task) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": task.instruction}]

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        if task.data["files"]:
            await sandbox.upload_archive(_tar(task.data["files"]))
        if task.data.get("setup"):
            res = await sandbox.exec(task.data["setup"], timeout=self.cfg.prepare_timeout)
            if not res.ok:
                raise SandboxError(f"cannot prepare {task.task_id}: its setup script failed "
                                   f"(exit {res.exit_code}): {(res.stderr or res.stdout)[-300:]}")

    async def verify(self, task: Task, sandbox: Sandbox) -> Verdict:
        where = f".rollout-grade-{secrets.token_hex(8)}"
        test_path = f"{where}/{TEST_NAME}"
        await check_interpreter(sandbox, self.cfg.python)  # graded in the agent's slot
        # The hidden test enters the slot only now: the agent never had it to read.
        await sandbox.write_file(test_path, task.data["test"].encode())
        node_ids = [f"{test_path}::{name}" for name in task.data["tests"]]
        run = pytest_run([test_path], node_ids, python=self.cfg.python,
                         plugin_autoload=self.cfg.pytest_plugin_autoload)
        await sandbox.write_file(run.spec_path, run.spec)
        result = await sandbox.exec(run.command, timeout=self.cfg.test_timeout)
        await sandbox.exec(f"rm -rf -- {shlex.quote(where)}", timeout=30.0)
        verdict = grade(node_ids, [], result, run.nonce)
        log.info("graded %s: score %.1f (%s)", task.task_id, verdict.score,
                 verdict.details["reason"])
        return verdict

    def reference_solution(self, task: Task) -> list[ToolCall]:
        script = task.data.get("solution")
        if not script:
            raise ValueError(f"terminal task {task.task_id} has no reference solution")
        return [ToolCall("write_file", {"path": GOLD_SCRIPT, "content": script}, "gold-1"),
                ToolCall("terminal", {"command": f"sh {GOLD_SCRIPT}; rc=$?; rm -f {GOLD_SCRIPT}; "
                                                 "exit $rc"}, "gold-2")]


register(TaskKind("terminal", TerminalEnv, load_terminal))

