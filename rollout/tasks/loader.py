"""Load SWE-smith rows (JSONL, JSON, parquet, or a Hugging Face dataset) as `Task`s.

Rows follow the real SWE-smith schema: instance_id, repo (with or without the `swesmith/`
prefix), patch (the diff that *introduces* the bug), FAIL_TO_PASS and PASS_TO_PASS (lists or
JSON-encoded strings of pytest node ids), image_name, problem_statement, optional
base_commit. A malformed row is skipped, counted by reason and logged; it never aborts a load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from rollout.tasks.config import BUNDLED, TaskSourceConfig
from rollout.types import Task

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_JSONL = BUNDLED_DIR / "instances.jsonl"
REPO_PREFIX = "swesmith/"


class RowError(ValueError):
    """A row that cannot become a task; the message is the counted skip reason."""


@dataclass
class LoadReport:
    """What a load kept and why it skipped the rest."""

    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def repo_name(repo: str) -> str:
    """The mirror's name: `swesmith/owner__repo.abc12345` -> `owner__repo.abc12345`,
    `owner/name` -> `owner__name` (`repo_cache.mirror_name` is the validating version)."""
    rest = repo[len(REPO_PREFIX):] if repo.startswith(REPO_PREFIX) else repo
    return rest.replace("/", "__")


def _test_list(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key)
    if value is None:
        raise RowError(f"missing {key}")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"{key} is not valid JSON") from None
    if hasattr(value, "tolist"):  # numpy arrays from parquet / datasets
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and t for t in value):
        raise RowError(f"{key} is not a list of test ids")
    return list(value)


def required_str(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"missing {key}")
    return value


def row_to_task(row: Any, kind: str = "swe_smith") -> Task:
    """Normalize one SWE-smith row. Raises RowError with a short reason if malformed."""
    if not isinstance(row, dict):
        raise RowError("row is not an object")
    instance_id = required_str(row, "instance_id")
    repo = required_str(row, "repo")
    patch = required_str(row, "patch")
    if "diff --git" not in patch and "\n+++ " not in patch:
        raise RowError("patch is not a unified diff")
    f2p = _test_list(row, "FAIL_TO_PASS")
    p2p = _test_list(row, "PASS_TO_PASS")
    if not f2p:
        raise RowError("FAIL_TO_PASS is empty")
    statement = row.get("problem_statement")
    if not isinstance(statement, str) or not statement.strip():
        raise RowError("missing problem_statement")
    image = row.get("image_name")
    data = {
        "instance_id": instance_id,
        "repo": repo,
        "repo_name": repo_name(repo),
        "patch": patch,
        "FAIL_TO_PASS": f2p,
        "PASS_TO_PASS": p2p,
        "image_name": image if isinstance(image, str) else None,
        "base_commit": row.get("base_commit") if isinstance(row.get("base_commit"), str) else None,
    }
    return Task(task_id=instance_id, kind=kind, instruction=statement, image=data["image_name"],
                data=data)


def _is_python(task: Task) -> bool:
    tests = task.data["FAIL_TO_PASS"] + task.data["PASS_TO_PASS"]
    return all(".py" in t.split("::", 1)[0] for t in tests)


def _in_split(task_id: str, split: str, eval_fraction: float) -> bool:
    if eval_fraction <= 0:
        return True
    h = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    is_eval = h < eval_fraction
    return is_eval if split in ("eval", "test", "validation") else not is_eval


# Every row comes with where it is, the same way for every source: `<file>:<line>` for
# JSONL (the line number an editor shows), `<file> row <n>` (1-based) otherwise.
Located = tuple[str, Any]


def _read_jsonl(path: Path, report: LoadReport) -> Iterator[Located]:
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                report.skipped["invalid JSON"] += 1
                log.warning("%s:%d: skipped row: invalid JSON (%s)", path, lineno, e.msg)


def _numbered(where: str, rows: Iterable[Any]) -> Iterator[Located]:
    for n, row in enumerate(rows, 1):
        yield f"{where} row {n}", row


def _read_rows(cfg: TaskSourceConfig, report: LoadReport) -> Iterable[Located]:
    source = cfg.source
    if source == BUNDLED:
        return _read_jsonl(BUNDLED_JSONL, report)
    path = Path(source).expanduser()
    if path.exists():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl(path, report)
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"task source {path}:{e.lineno}: invalid JSON ({e.msg})") from None
            return _numbered(str(path), data if isinstance(data, list) else [data])
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise RuntimeError(
                    f"reading {path} needs pyarrow; install it with `pip install pyarrow`"
                ) from None
            return _numbered(str(path), pq.read_table(path).to_pylist())
        raise ValueError(f"task source {path}: unsupported file type (use .jsonl, .json or .parquet)")
    if source.endswith((".jsonl", ".json", ".parquet")) or "/" not in source:
        raise FileNotFoundError(f"task source {source!r} does not exist (a file path, 'bundled', "
                                "or a Hugging Face dataset name like 'SWE-bench/SWE-smith')")
    return _read_hf(source, cfg.split)


def _read_hf(name: str, split: str) -> Iterable[Any]:
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            f"task source {name!r} is a Hugging Face dataset, which needs `pip install datasets` "
            "(or export it to JSONL/parquet and point task.source at the file)"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except ValueError:  # most SWE-smith datasets only have "train"; split by hash instead
        ds = datasets.load_dataset(name, split="train")
    return _numbered(f"{name}[{split}]", ds)


def load_tasks_with_report(cfg: TaskSourceConfig) -> tuple[list[Task], LoadReport]:
    """Load, validate, filter, split, shuffle and cap tasks; report skipped rows by reason."""
    report = LoadReport()
    tasks: list[Task] = []
    seen: set[str] = set()
    for where, row in _read_rows(cfg, report):
        try:
            task = row_to_task(row, cfg.kind)
        except RowError as e:
            report.skipped[str(e)] += 1
            rid = row.get("instance_id") if isinstance(row, dict) else None
            log.warning("%s: skipped row (%s): %s", where, rid or "?", e)
            continue
        if task.task_id in seen:
            report.skipped["duplicate instance_id"] += 1
            log.warning("%s: skipped row (%s): duplicate instance_id", where, task.task_id)
            continue
        seen.add(task.task_id)
        if cfg.filter == "python":
            if not _is_python(task):
                report.skipped["filtered: not python"] += 1
                continue
        elif cfg.filter and cfg.filter not in task.task_id and cfg.filter not in task.data["repo"]:
            report.skipped["filtered"] += 1
            continue
        tasks.append(task)
    return shape_tasks(tasks, cfg, report, filtered=True)


def shape_tasks(tasks: list[Task], cfg: TaskSourceConfig, report: LoadReport,
                filtered: bool = False) -> tuple[list[Task], LoadReport]:
    """What every kind's loader does last: the `filter` (a task-id substring; "python" is
    SWE-smith's own and left to its loader), the train/eval split, shuffle and cap."""
    kept = []
    for task in tasks:
        if not filtered and cfg.filter not in ("", "python") and cfg.filter not in task.task_id:
            report.skipped["filtered"] += 1
            continue
        if _in_split(task.task_id, cfg.split, cfg.eval_fraction):
            kept.append(task)
    tasks = kept
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(tasks)
    if cfg.max_items is not None:
        tasks = tasks[: cfg.max_items]
    report.loaded = len(tasks)
    if report.total_skipped:
        log.warning("loaded %d %s tasks from %s; skipped %d rows: %s", report.loaded, cfg.kind,
                    cfg.source, report.total_skipped, dict(report.skipped))
    else:
        log.info("loaded %d %s tasks from %s", report.loaded, cfg.kind, cfg.source)
    return tasks, report


def load_tasks(cfg: TaskSourceConfig) -> list[Task]:
    return load_tasks_with_report(cfg)[0]
