"""Terminal task folders as they are published, read into one normalized shape.

Three layouts, told apart by what the folder holds (`layout_of`):

- **Harbor** (`task.toml`; Endless Terminals ships this way, Terminal-Bench 2 too):
  `instruction.md`, `environment/Dockerfile` (or `[environment] docker_image`), `tests/test.sh`
  (the verifier: it writes `/logs/verifier/reward.txt` or `reward.json`) with its helper files
  (`tests/test_*.py`, fixtures), `solution/solve.sh` (+ any other files of `solution/`).
- **Terminal-Bench 1** (`task.yaml`): the instruction in `task.yaml`, `Dockerfile` at the top
  (the folder is its build context), `run-tests.sh` (runs pytest; its output is the report),
  `tests/test_outputs.py`, `solution.sh`.
- **bundled** (this project's own form, `instruction.md` without `task.toml`):
  `environment/{Dockerfile,image,workspace/,setup.sh}`, `tests/test_final_state.py` (or any
  `tests/test_*.py`), `solution.sh`; a `tests/test.sh` makes it a Harbor task with defaults.

Whatever the layout, the task's own verifier grades it where it has one (`tests/test.sh`,
`run-tests.sh`), else its pytest files (`tasks.verifier=pytest` prefers the pytest files).
Timeouts and resources come from `task.toml` / `task.yaml`. Anything this project cannot run
(a docker-compose environment, GPUs, a Dockerfile instruction the builder refuses, a broken
`task.toml`) is a `RowError` naming the file: the folder is skipped, logged and counted once,
at load.
"""

from __future__ import annotations

import ast
import base64
import math
import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

from rollout.tasks.loader import RowError

HARBOR, TB1, BUNDLED_FORM = "harbor", "terminal-bench", "bundled"
DOCKERFILE_PREFIX = "dockerfile:"
# The whole tests/ dir travels with the task (to every worker) and into the slot at grading.
MAX_TESTS_BYTES = 8 << 20
# Terminal-Bench 1's documented defaults, used when task.yaml leaves one out (a task.toml
# without a timeout gets the run's: agent.wall_clock_budget, tasks.test_timeout).
TB1_AGENT_TIMEOUT, TB1_TEST_TIMEOUT = 360.0, 60.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def layout_of(folder: Path) -> str | None:
    """The layout a folder is in, or None when it is not a task folder."""
    if (folder / "task.toml").is_file():
        return HARBOR
    if (folder / "task.yaml").is_file():
        return TB1
    if (folder / "instruction.md").is_file():
        return HARBOR if (folder / "tests" / "test.sh").is_file() else BUNDLED_FORM
    return None


def graded_tests(source: str, name: str) -> list[str]:
    """The test functions of a pytest file (`name` names it in errors): module-level `test*`
    functions and `test*` methods of `Test*` classes, as `func` or `Class::func`. A
    parametrized one is graded through every case it expands to (`func[...]`)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise RowError(f"{name} does not parse (line {e.lineno})") from None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names += [f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and f.name.startswith("test")]
    if not names:
        raise RowError(f"{name} has no test functions")
    return names


def _text(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RowError(f"{path.name} is not UTF-8 text") from None


def _dir_files(root: Path, what: str) -> tuple[dict[str, str], dict[str, str]]:
    """Every regular file under `root`: text ones as text, the rest base64 (kept apart so the
    task stays JSON). Links and special files are refused: they could point anywhere."""
    text: dict[str, str] = {}
    binary: dict[str, str] = {}
    total = 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if "__pycache__" in p.relative_to(root).parts:  # the author's local test runs
            continue
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise RowError(f"{what}/{rel} is a link or a special file (only plain files are copied)")
        if p.is_dir():
            continue
        data = p.read_bytes()
        total += len(data)
        if total > MAX_TESTS_BYTES:
            raise RowError(f"{what}/ holds more than {MAX_TESTS_BYTES >> 20} MiB")
        try:
            text[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            binary[rel] = base64.b64encode(data).decode()
    return text, binary


def _number(table: dict[str, Any], key: str, where: str, *, integer: bool = False) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise RowError(f"{where} {key} must be a number > 0, got {value!r}")
    return int(value) if integer else float(value)


def _size_mb(value: Any, where: str) -> int | None:
    """Harbor's deprecated `memory = "2G"` / `storage = "512M"` spelling, in MB."""
    if value is None:
        return None
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return max(1, int(float(text[:-1]) * units[text[-1]]))
        return int(float(text))
    except ValueError:
        raise RowError(f"{where} must be a size like '2G' or '512M', got {value!r}") from None


def _env_table(table: dict[str, Any], where: str) -> dict[str, str]:
    env = table.get("env") or {}
    if not isinstance(env, dict):
        raise RowError(f"{where} env must be a table of variables")
    bad = [k for k in env if not _ENV_NAME.match(str(k))]
    if bad:
        raise RowError(f"{where} env: {bad[0]!r} is not a variable name")
    return {str(k): str(v) for k, v in env.items()}


def read_task_toml(path: Path) -> dict[str, Any]:
    """The fields of a Harbor `task.toml` this project applies (unknown keys are ignored, as
    Harbor ignores them)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RowError(f"task.toml is not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise RowError("task.toml is not UTF-8 text") from None
    tables = {}
    for name in ("agent", "verifier", "environment", "solution"):
        tables[name] = doc.get(name) or {}
        if not isinstance(tables[name], dict):
            raise RowError(f"task.toml: [{name}] must be a table")
    agent, verifier, env, solution = (tables[n] for n in ("agent", "verifier", "environment",
                                                          "solution"))
    out: dict[str, Any] = {
        "agent_timeout": _number(agent, "timeout_sec", "task.toml: [agent]"),
        "verifier_timeout": _number(verifier, "timeout_sec", "task.toml: [verifier]"),
        "verifier_env": _env_table(verifier, "task.toml: [verifier]"),
        "solution_env": _env_table(solution, "task.toml: [solution]"),
        "cpus": _number(env, "cpus", "task.toml: [environment]"),
        "memory_mb": _number(env, "memory_mb", "task.toml: [environment]", integer=True)
        or _size_mb(env.get("memory"), "task.toml: [environment] memory"),
        "disk_mb": _number(env, "storage_mb", "task.toml: [environment]", integer=True)
        or _size_mb(env.get("storage"), "task.toml: [environment] storage"),
    }
    if doc.get("steps"):
        raise RowError("task.toml: multi-step tasks ([[steps]]) are not supported")
    if verifier.get("environment_mode") == "separate":
        raise RowError("task.toml: [verifier] environment_mode = \"separate\" (a verifier in its "
                       "own container) is not supported")
    gpus = env.get("gpus") or 0
    if gpus:
        raise RowError(f"task.toml: [environment] gpus = {gpus!r}: slots have no GPUs")
    image = env.get("docker_image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise RowError("task.toml: [environment] docker_image must be an image reference")
    out["image"] = image.strip() if image else None
    return out


def read_task_yaml(path: Path) -> dict[str, Any]:
    """The fields of a Terminal-Bench 1 `task.yaml`: the instruction (or the older
    `descriptions` list's `base` entry), the two timeouts and the parser."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RowError(f"task.yaml is not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise RowError("task.yaml is not a mapping")
    instruction = doc.get("instruction")
    if not instruction and isinstance(doc.get("descriptions"), list):
        base = [d for d in doc["descriptions"] if isinstance(d, dict) and d.get("key") == "base"]
        instruction = base[0].get("description") if base else None
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("task.yaml has no instruction")
    parser = doc.get("parser_name", "pytest")
    if parser != "pytest":
        raise RowError(f"task.yaml: parser_name {parser!r} is not supported (only pytest)")
    return {"instruction": instruction,
            "agent_timeout": _number(doc, "max_agent_timeout_sec", "task.yaml:") or TB1_AGENT_TIMEOUT,
            "verifier_timeout": _number(doc, "max_test_timeout_sec", "task.yaml:") or TB1_TEST_TIMEOUT}


def check_dockerfile(path: Path, shown: str) -> None:
    """Refuse at load a Dockerfile the slot servers' builder would refuse at every build."""
    from sandbox_image.images.dockerfile import DockerfileError, plan

    text = _text(path)
    if text is None:
        raise RowError(f"missing {shown}")
    try:
        plan(text)  # parsed and planned (stages, ARGs, COPY --from) as every build would
    except DockerfileError as e:
        raise RowError(f"{shown}: {e}") from None


def _compose_services(path: Path) -> list[str]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RowError(f"{path.name} is not valid YAML") from None
    services = doc.get("services") if isinstance(doc, dict) else None
    return sorted(services) if isinstance(services, dict) else []


def _pytest_files(tests: dict[str, str]) -> list[str]:
    """The pytest files of a tests/ dir, the final-state ones first (what Endless Terminals,
    the Harbor template and Terminal-Bench 1 name them)."""
    found = [p for p in tests if posixpath.basename(p).startswith("test")
             and p.endswith(".py") and "/" not in p]
    preferred = ("test_final_state.py", "test_state.py", "test_outputs.py")
    return sorted(found, key=lambda p: (preferred.index(p) if p in preferred else len(preferred), p))


def choose_verifier(data: dict[str, Any], script: str | None, prefer_pytest: bool,
              script_kind: str) -> None:
    """Which of the task's verifiers grades it, and the tests that one needs."""
    files = _pytest_files(data["tests_dir"])
    if script and not (prefer_pytest and files):
        data["verifier"], data["verifier_script"] = script_kind, script
        if script_kind == "tb1":  # its report names the functions of the pytest files
            data["tests"] = [f"{f}::{n}" for f in files
                             for n in graded_tests(data["tests_dir"][f], f"tests/{f}")]
        return
    if not files:
        raise RowError("no verifier: neither tests/test.sh (or run-tests.sh) nor a "
                       "tests/test_*.py file")
    data["verifier"] = "pytest"
    data["pytest_files"] = files
    data["tests"] = [f"{f}::{n}" for f in files
                     for n in graded_tests(data["tests_dir"][f], f"tests/{f}")]


def read_folder(folder: Path, prefer_pytest: bool = False) -> dict[str, Any]:
    """A task folder in any layout as the fields of a terminal Task: task_id, instruction,
    image and `data` (see `rollout.tasks.terminal`). Raises RowError for what cannot run."""
    layout = layout_of(folder)
    if layout is None:
        raise RowError("not a task folder (no task.toml, task.yaml or instruction.md)")
    reader = _read_tb1 if layout == TB1 else _read_harbor
    return reader(folder, layout, prefer_pytest)


def base_data(layout: str) -> dict[str, Any]:
    return {"format": layout, "files": {}, "setup": None, "solution": None,
            "solution_files": {}, "solution_env": {}, "tests_dir": {}, "tests_binary": {},
            "verifier": "pytest", "verifier_script": None, "pytest_files": [], "tests": [],
            "verifier_env": {}, "agent_timeout": None, "verifier_timeout": None,
            "cpus": None, "memory_mb": None, "disk_mb": None}


def _read_harbor(folder: Path, layout: str, prefer_pytest: bool) -> dict[str, Any]:
    data = base_data(layout)
    settings = read_task_toml(folder / "task.toml") if (folder / "task.toml").is_file() else {}
    image = settings.pop("image", None)
    data.update({k: v for k, v in settings.items() if v is not None})
    instruction = _text(folder / "instruction.md")
    if not instruction or not instruction.strip():
        raise RowError("missing instruction.md")
    env = folder / "environment"
    if (env / "docker-compose.yaml").is_file() or (env / "docker-compose.yml").is_file():
        raise RowError("environment/docker-compose.yaml: multi-container environments are "
                       "not supported")
    image_file = _text(env / "image")
    if image is None and image_file and image_file.strip():
        image = image_file.strip()
    if image is None and (env / "Dockerfile").is_file():
        check_dockerfile(env / "Dockerfile", "environment/Dockerfile")
        image = DOCKERFILE_PREFIX + str(env.resolve())
    if image is None and (folder / "task.toml").is_file():
        raise RowError("missing environment/Dockerfile (or [environment] docker_image in "
                       "task.toml)")
    if (env / "workspace").is_dir():
        files, binary = _dir_files(env / "workspace", "environment/workspace")
        if binary:
            raise RowError(f"environment/workspace/{min(binary)} is not text (put binary "
                           "files into the image with the Dockerfile)")
        data["files"] = files
    data["setup"] = _text(env / "setup.sh")
    if (folder / "tests").is_dir():
        data["tests_dir"], data["tests_binary"] = _dir_files(folder / "tests", "tests")
    script = "test.sh" if "test.sh" in data["tests_dir"] else None
    choose_verifier(data, script, prefer_pytest, "reward")
    solution = folder / "solution"
    if (solution / "solve.sh").is_file():
        files, binary = _dir_files(solution, "solution")
        data["solution"] = files.pop("solve.sh", None)
        data["solution_files"] = files
        if binary:  # a gold run writes the solution through the agent's own text tools
            data["solution_unrunnable"] = (f"solution/{min(binary)} is not text: the gold "
                                           "policy cannot write it through the tools")
    else:
        data["solution"] = _text(folder / "solution.sh")
    return {"task_id": folder.name, "instruction": instruction.strip(), "image": image,
            "data": data}


def _read_tb1(folder: Path, layout: str, prefer_pytest: bool) -> dict[str, Any]:
    data = base_data(layout)
    settings = read_task_yaml(folder / "task.yaml")
    instruction = settings.pop("instruction")
    data.update(settings)
    compose = folder / "docker-compose.yaml"
    if compose.is_file() and len(services := _compose_services(compose)) > 1:
        raise RowError(f"docker-compose.yaml: multi-container tasks (services "
                       f"{', '.join(services)}) are not supported")
    check_dockerfile(folder / "Dockerfile", "Dockerfile")
    # The task folder is the build context, as Terminal-Bench builds it.
    image = DOCKERFILE_PREFIX + str(folder.resolve())
    if (folder / "tests").is_dir():
        data["tests_dir"], data["tests_binary"] = _dir_files(folder / "tests", "tests")
    script = None
    run_tests = _text(folder / "run-tests.sh")
    if run_tests is not None:
        if "run-tests.sh" in data["tests_dir"]:
            raise RowError("tests/run-tests.sh would shadow the task's run-tests.sh")
        data["tests_dir"]["run-tests.sh"] = run_tests
        script = "run-tests.sh"
    choose_verifier(data, script, prefer_pytest, "tb1")
    if (folder / "solution.sh").is_file():
        data["solution"] = _text(folder / "solution.sh")
    elif (folder / "solution.yaml").is_file():
        data["solution_unrunnable"] = ("solution.yaml (a list of interactive terminal steps) is "
                                       "not supported by the gold policy; give a solution.sh")
    return {"task_id": folder.name, "instruction": instruction.strip(), "image": image,
            "data": data}
