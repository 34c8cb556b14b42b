"""Terminal tasks: folders and JSONL rows load the same; in real slots every bundled task's
gold solution scores 1.0 and doing nothing 0.0; the hidden test is unreadable before grading;
a grading run that cannot start is an infrastructure outcome, never a 0.0."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import load_tasks, make_env
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.terminal import (BUNDLED_TERMINAL, TEST_NAME, load_terminal,
                                    read_task_folder, graded_tests)
from rollout.types import Outcome
from tests.agent_support import QWEN_TOKENIZER

TERMINAL = {"kind": "terminal", "filter": "", "pytest_plugin_autoload": False}


def test_folders_and_jsonl_rows_are_the_same_tasks(tmp_path):
    folders = load_tasks(TERMINAL)
    assert sorted(t.task_id for t in folders) == ["archive-logs", "csv-total", "error-summary",
                                                   "greet-script", "ini-config", "setup-wizard"]
    assert all((t.data["solution"] or t.data.get("solution_calls")) and t.data["tests"]
               for t in folders)
    wizard = next(t for t in folders if t.task_id == "setup-wizard")
    assert wizard.data["tools"] == ["tmux"] and wizard.data["solution_calls"][0]["name"] == "tmux"
    rows = [read_task_folder(BUNDLED_TERMINAL / t.task_id) for t in folders]
    bad = [{"task_id": "no-test", "instruction": "x"},
           {"task_id": "params", "instruction": "x", "test_final_state":
            "import pytest\n@pytest.mark.parametrize('a', [1])\ndef test_a(a):\n    pass\n"},
           {"task_id": "escape", "instruction": "x", "test_final_state": "def test_a():\n    pass\n",
            "files": {"../outside": "x"}}]
    path = tmp_path / "terminal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + bad) + "\n")
    from_jsonl, report = load_terminal(TaskSourceConfig(kind="terminal", source=str(path), filter=""))
    *same, params = from_jsonl  # a parametrized test is graded through its cases
    assert [t.to_dict() for t in same] == [t.to_dict() for t in folders]
    assert params.task_id == "params" and params.data["tests"] == ["test_final_state.py::test_a"]
    assert sum(report.skipped.values()) == 2
    assert any("missing test_final_state" in r for r in report.skipped)
    assert any("leaves the workspace" in r for r in report.skipped)
    assert graded_tests("def test_a():\n    pass\nclass TestB:\n    def test_c(self):\n"
                          "        pass\n    def helper(self):\n        pass\n") == ["test_a", "TestB::test_c"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=3),
                             SlotLimits(isolation="bwrap"))
    await p.start()
    yield p
    await p.stop()


def _policy(env, kind="gold", responses=()):
    script = {"responses": list(responses)} if kind == "scripted" else {}  # scripted's own key
    return make_policy(PolicyConfig(type=kind, tokenizer=QWEN_TOKENIZER, **script), env)


@pytest.mark.asyncio(loop_scope="module")
async def test_every_bundled_task_gold_scores_one_and_no_op_zero(pool):
    import asyncio

    env = make_env("terminal", TERMINAL)

    async def one(task, policy, tid):
        async with pool.session(tid) as sandbox:
            return await run_rollout(task, env, policy, sandbox, AgentConfig(), trajectory_id=tid)

    tasks = load_tasks(TERMINAL)
    gold = await asyncio.gather(*(one(t, _policy(env), f"g-{t.task_id}") for t in tasks))
    for task, traj in zip(tasks, gold):
        assert traj.outcome == Outcome.DONE and traj.score == 1.0, (task.task_id, traj.metadata)
        details = traj.metadata["verdict"]
        assert details["f2p_passed"] == details["f2p_total"] == len(task.data["tests"])
    noop = await asyncio.gather(*(one(t, _policy(env, "scripted", ["Nothing to do."]), f"n-{t.task_id}")
                                  for t in tasks))
    for task, traj in zip(tasks, noop):
        assert traj.outcome == Outcome.DONE and traj.score == 0.0, task.task_id
    assert pool.stats()["slots_in_use"] == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_hidden_test_is_not_readable_before_grading(pool):
    env = make_env("terminal", TERMINAL)
    task = next(t for t in load_tasks(TERMINAL) if t.task_id == "error-summary")
    marker = '{"INFO": 4, "WARN": 2, "ERROR": 3}'
    host_copy = BUNDLED_TERMINAL / task.task_id / "tests" / TEST_NAME
    assert marker in host_copy.read_text()
    async with pool.session("hidden") as sandbox:
        await env.prepare(task, sandbox)
        seen = await sandbox.exec(f"grep -rlF {shlex.quote(marker)} . /tmp 2>/dev/null; "
                                  f"cat {shlex.quote(str(host_copy))}")
        assert marker not in seen.stdout and seen.exit_code != 0
        assert TEST_NAME not in (await sandbox.exec("find . /tmp -name '*.py'")).stdout
        await sandbox.exec(task.data["solution"])
        verdict = await env.verify(task, sandbox)  # graded: the test was copied in then
        assert verdict.score == 1.0
        assert ".rollout-grade" not in (await sandbox.exec("ls -a")).stdout  # and removed


@pytest.mark.asyncio(loop_scope="module")
async def test_grading_that_cannot_run_is_not_a_zero(pool):
    env = make_env("terminal", {**TERMINAL, "python": "/nonexistent/python"})
    task = load_tasks(TERMINAL)[0]
    async with pool.session("no-python") as sandbox:
        traj = await run_rollout(task, env, _policy(env), sandbox, AgentConfig(),
                                 trajectory_id="no-python")
    assert traj.outcome == Outcome.GRADING_ERROR and "cannot_run" in traj.error


@pytest.mark.asyncio(loop_scope="module")
async def test_a_script_verifier_on_a_read_only_root_is_not_a_zero(pool):
    """Harbor's test.sh needs /tests and /logs: the host view's root is read-only."""
    from rollout.types import GradingError

    env = make_env("terminal", TERMINAL)
    task = load_tasks(TERMINAL)[0]
    task.data = {**task.data, "verifier": "reward", "verifier_script": "test.sh",
                 "tests_dir": {"test.sh": "#!/bin/sh\necho 1 > /logs/verifier/reward.txt\n"}}
    async with pool.session("read-only-root") as sandbox:
        with pytest.raises(GradingError, match="could not be put at /tests") as e:
            await env.verify(task, sandbox)
    assert e.value.kind == "cannot_run"


def test_dockerfile_environments_become_build_labels(tmp_path):
    folder = tmp_path / "tasks" / "built"
    (folder / "environment").mkdir(parents=True)
    (folder / "tests").mkdir()
    (folder / "instruction.md").write_text("Do it.\n")
    (folder / "environment" / "Dockerfile").write_text("FROM debian:bookworm\nRUN true\n")
    (folder / "tests" / TEST_NAME).write_text("def test_a():\n    pass\n")
    cache = tmp_path / "cache" / "repos"
    [task] = load_terminal(TaskSourceConfig(kind="terminal", source=str(folder.parent), filter="",
                                            cache_dir=str(cache)))[0]
    assert task.image == f"dockerfile:{(folder / 'environment').resolve()}"
    row = {"task_id": "inline", "instruction": "x", "test_final_state": "def test_a():\n    pass\n",
           "dockerfile": "FROM debian:bookworm\nWORKDIR /srv\n"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [inline] = load_terminal(TaskSourceConfig(kind="terminal", source=str(path), filter="",
                                              cache_dir=str(cache)))[0]
    ctx = inline.image.removeprefix("dockerfile:")
    assert inline.image.startswith("dockerfile:") and (Path(ctx) / "Dockerfile").read_text() == row["dockerfile"]


@pytest.mark.asyncio(loop_scope="module")
async def test_the_tmux_tool_drives_an_interactive_session(pool):
    """Keys, Ctrl-C, arrows, waits and the screen, in a real slot; the shell lives between
    calls (the slot is a long-lived container) and is gone once stopped."""
    from rollout.record.casts import final_screen
    from rollout.agent.toolbox import Toolbox, with_extra_tools
    from rollout.agent.tools import TOOL_SCHEMAS, SandboxTools
    from rollout.types import ToolCall, ToolLimits

    async with pool.session("tmux") as sandbox:
        limits = ToolLimits()
        tools = Toolbox(SandboxTools(sandbox, limits), sandbox, limits,
                        with_extra_tools(list(TOOL_SCHEMAS), ["tmux"]), record=True)

        async def tmux(**args):
            res = await tools.run(ToolCall("tmux", args, "t"))
            assert not res.is_error, res.content
            return res.content

        assert (await tmux(action="start")).startswith("$")
        out = await tmux(action="send", keys=["export KEPT=42", "Enter"], wait="prompt")
        assert "foreground bash" in out
        out = await tmux(action="send", keys=["sleep 100", "Enter"])  # settled: sleep runs
        out = await tmux(action="send", keys=["C-c"], wait="prompt", timeout=20)
        assert "^C" in out and out.endswith("foreground bash, cursor 2,3]")
        # Up recalls the last command line (readline): the arrow reached the shell as a key
        out = await tmux(action="send", keys=["echo $KEPT-ok", "Enter"], wait="prompt")
        out = await tmux(action="send", keys=["Up", "Enter"], wait="prompt")
        assert out.count("42-ok") == 2
        out = await tmux(action="send", keys=["seq 100000000"], timeout=10, wait="none")
        out = await tmux(action="send", keys=["Enter"], timeout=1)  # never settles
        assert "still changing after 1s" in out
        await tmux(action="send", keys=["C-c"], wait="prompt", timeout=20)
        captured = await tmux(action="capture")
        assert (await tmux(action="stop")) == "Terminal closed."
        assert "tmux" not in (await sandbox.exec("ps -eo comm")).stdout
        assert (await tmux(action="capture")).startswith("$")  # a fresh one
        bad = await tools.run(ToolCall("tmux", {"action": "send"}, "t"))
        assert bad.is_error and "needs 'keys'" in bad.content
        await tools.close()
        assert "tmux" not in (await sandbox.exec("ps -eo comm")).stdout
    # the recording's screen before the stop is the one the capture returned
    cast = tools.casts()["tmux"]
    screens = cast.split("\n")
    assert final_screen(cast).startswith("$") and captured.rsplit("\n", 1)[0] in cast.replace(
        "\\r\\n", "\n")
    assert len(screens) > 5


@pytest.mark.asyncio(loop_scope="module")
async def test_an_interpreter_in_the_agents_workspace_is_refused(pool):
    """Issue 26 case 6: the image's Python lives in the writable workdir (`.venv`); the agent
    replaced it with a script printing passes. Graded with it: refused, never scored. The
    same fake beside the default interpreter changes nothing."""
    task = next(t for t in load_tasks(TERMINAL) if t.task_id == "greet-script")
    fake = "#!/bin/sh\necho 'PASSED'\nexit 0\n"
    for python, expect in ((".venv/bin/python", "refused"), ("python", 0.0)):
        env = make_env("terminal", {**TERMINAL, "python": python})
        async with pool.session(f"venv-{expect}") as sandbox:
            await env.prepare(task, sandbox)
            await sandbox.write_file(".venv/bin/python", fake.encode())
            assert (await sandbox.exec("chmod +x .venv/bin/python")).ok
            traj = await run_rollout(task, env, _policy(env, "scripted", ["Done."]), sandbox,
                                     AgentConfig(), trajectory_id=f"venv-{expect}")
        if expect == "refused":
            assert traj.outcome == Outcome.GRADING_ERROR and "unsafe_interpreter" in traj.error, traj.error
            assert "tasks.python" in traj.error
        else:
            assert traj.outcome == Outcome.DONE and traj.score == 0.0, traj.error
