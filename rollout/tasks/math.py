"""Math problems with numeric answers: kinds `math_repl` (a Python session in a small slot,
no repo) and `math` (no slot at all; the model reasons in text).

Rows: the bundled set (`bundled/math/problems.jsonl`: id, question, answer, solution_code),
or JSONL in GSM8K's format (`question`, `answer` whose last line is `#### <number>`; ids are
`<file stem>-<line>` unless the row has an `id`). The model answers with the `submit` tool;
without a submission, the final reply's answer counts (`\\boxed{}`, "the answer is ...",
else its last number). `rollout.tasks.answers` compares the numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout.protocols import Sandbox
from rollout.tasks.answers import final_answer, parse_number, same_number
from rollout.tasks.base import BaseTaskEnv
from rollout.tasks.config import BUNDLED, TaskSourceConfig
from rollout.tasks.loader import LoadReport, RowError, required_str, shape_tasks
from rollout.tasks.registry import TaskKind, register
from rollout.agent.tools import PYTHON_SCHEMA, SandboxTools, ToolLimits
from rollout.types import SandboxSpec, Task, ToolCall, ToolResult, Verdict

log = logging.getLogger(__name__)

BUNDLED_MATH = Path(__file__).parent / "bundled" / "math" / "problems.jsonl"
ANSWER_FILE = ".answer"
SLOT_MEMORY_MB = 512  # what a math_repl slot needs at least

SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit",
        "description": "Submit your final answer (a number). The last submission counts.",
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "string", "description": "The final answer."}},
            "required": ["answer"],
        },
    },
}

PROMPT = {
    "math_repl": ("Solve the problem. You have a persistent Python session (the `python` tool) "
                  "for calculations; when you are sure, call `submit` with the final number."),
    "math": "Solve the problem. When you are sure, call `submit` with the final number.",
}


def row_to_math_task(row: Any, kind: str, fallback_id: str) -> Task:
    """A bundled or GSM8K-format row as a Task. Raises RowError with a short reason."""
    if not isinstance(row, dict):
        raise RowError("row is not an object")
    question = required_str(row, "question")
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise RowError("missing answer")
    if "####" in answer:  # GSM8K: worked solution, then `#### <number>`
        answer = answer.rsplit("####", 1)[1].strip()
    if parse_number(answer) is None:
        raise RowError("answer is not a number")
    task_id = row.get("id") if isinstance(row.get("id"), str) and row["id"] else fallback_id
    code = row.get("solution_code") if isinstance(row.get("solution_code"), str) else None
    return Task(task_id=task_id, kind=kind, instruction=question.strip(),
                data={"answer": answer, "solution_code": code})


def load_math(cfg: TaskSourceConfig) -> tuple[list[Task], LoadReport]:
    path = BUNDLED_MATH if cfg.source == BUNDLED else Path(cfg.source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"task source {cfg.source!r} for kind {cfg.kind} is not a "
                                "JSONL file (or 'bundled')")
    report = LoadReport()
    tasks: list[Task] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tasks.append(row_to_math_task(json.loads(line), cfg.kind,
                                              f"{path.stem}-{lineno}"))
            except json.JSONDecodeError:
                report.skipped["invalid JSON"] += 1
                log.warning("%s:%d: skipped row: invalid JSON", path, lineno)
            except RowError as e:
                report.skipped[str(e)] += 1
                log.warning("%s:%d: skipped row: %s", path, lineno, e)
    return shape_tasks(tasks, cfg, report)


class MathTools(SandboxTools):
    """`python` (math_repl only) and `submit`, which keeps the answer in the workspace."""

    def __init__(self, sandbox: Sandbox, limits: ToolLimits, repl: bool) -> None:
        super().__init__(sandbox, limits, frozenset({"python"} if repl else ()))

    async def run(self, call: ToolCall, *, max_timeout: float | None = None) -> ToolResult:
        if call.name != "submit":
            return await super().run(call, max_timeout=max_timeout)
        answer = call.arguments.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            return ToolResult(call.call_id, call.name, "Error: 'answer' must be a non-empty "
                              "string.", is_error=True)
        await self.sandbox.write_file(ANSWER_FILE, answer.encode())
        return ToolResult(call.call_id, call.name, f"Submitted: {answer.strip()}")


class MathEnv(BaseTaskEnv):
    """`rollout.protocols.TaskEnv` for numeric-answer problems."""

    def __init__(self, cfg: TaskSourceConfig | None = None) -> None:
        self.cfg = cfg or TaskSourceConfig(kind="math_repl")
        self.repl = self.cfg.kind == "math_repl"

    def messages(self, task: Task) -> list[dict[str, Any]]:
        return [{"role": "system", "content": PROMPT["math_repl" if self.repl else "math"]},
                {"role": "user", "content": task.instruction}]

    def tools(self, task: Task) -> list[dict[str, Any]]:
        return [PYTHON_SCHEMA, SUBMIT_SCHEMA] if self.repl else [SUBMIT_SCHEMA]

    def tool_executor(self, task: Task, sandbox: Sandbox, limits: ToolLimits) -> MathTools:
        return MathTools(sandbox, limits, self.repl)

    def sandbox_spec(self, task: Task) -> SandboxSpec | None:
        return SandboxSpec(image=None, memory_mb=SLOT_MEMORY_MB) if self.repl else None

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        return None  # an empty workspace: nothing to set up

    async def verify(self, task: Task, sandbox: Sandbox, *,
                     transcript: Sequence[dict[str, Any]] = ()) -> Verdict:
        try:
            given: str | None = (await sandbox.read_file(ANSWER_FILE, max_bytes=4096)).decode(
                "utf-8", "replace")
            how = "submitted"
        except FileNotFoundError:
            replies = [m for m in transcript if m.get("role") == "assistant"]
            given = final_answer(str(replies[-1].get("content") or "")) if replies else None
            how = "final reply" if given is not None else "no answer"
        ok = same_number(given, task.data["answer"])
        return Verdict(1.0 if ok else 0.0, {"reason": f"{how}: {given!r} vs {task.data['answer']!r}",
                                            "answer": given})

    def reference_solution(self, task: Task) -> list[ToolCall]:
        calls = []
        if self.repl and task.data.get("solution_code"):
            calls.append(ToolCall("python", {"code": task.data["solution_code"]}, "gold-1"))
        calls.append(ToolCall("submit", {"answer": task.data["answer"]}, f"gold-{len(calls) + 1}"))
        return calls


register(TaskKind("math_repl", MathEnv, load_math))
register(TaskKind("math", MathEnv, load_math))
