"""Terminal tasks in the published layouts (tests/tasks/terminal_layouts.py: Harbor, Endless
Terminals, Terminal-Bench 1, the bundled form, a fractional Harbor reward, broken folders).

In-process: what each layout loads to (verifier, timeouts, resources), what is skipped and
why, Harbor's reward-file rules, the task's own timeouts reaching the agent and the verifier,
a gold solution cut by max_tokens as a task error. In real image slots (the slot servers
build the tasks' Dockerfile, bubblewrap, the real verifiers): doing nothing scores 0.0 in
every layout; the parametrized tests graded by the hardened pytest runner; a verifier that
needs longer than `tasks.test_timeout` gets the task's own timeout. Through `launch.py`
(one run, every layout, the image store the in-process tests warmed): gold scores 1.0 in each
layout and 0.5 for the fractional reward, and the broken folders are counted in the summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from types import SimpleNamespace

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.settings.preflight import (PreflightError, check_sandbox_specs, check_task_budgets,
                               check_tasks)
from rollout.rollout import run_rollout
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import make_env
from rollout.tasks.base import agent_config_for
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.loader import RowError
from rollout.tasks.mix import TaskEnvs
from rollout.tasks.terminal import load_terminal
from rollout.tasks.terminal_formats import read_task_toml
from rollout.tasks.terminal_verify import parse_reward
from rollout.types import GradingError, Outcome, PolicyError
from tests.actors.helpers import groups_jsonl
from tests.agent_support import QWEN_TOKENIZER
from tests.launch_config import qwen_tokenizer_dir
from tests.sandbox_image.images.python_image import build_python_image
from tests.tasks.terminal_layouts import BROKEN, EXPECTED, write_layouts
from tests.test_launch import launch

TERMINAL = {"kind": "terminal", "filter": "", "pytest_plugin_autoload": False}


def _load(source, **over):
    return load_terminal(TaskSourceConfig(**{**TERMINAL, "source": str(source), **over}))


def test_each_layout_loads_with_its_own_settings_and_broken_folders_are_counted(tmp_path):
    root = write_layouts(tmp_path / "tasks", tmp_path / "no-base-needed-to-load")
    tasks, report = _load(root)
    by_id = {t.task_id: t for t in tasks}
    assert sorted(by_id) == sorted(EXPECTED)
    assert report.total_skipped == len(BROKEN)
    for folder, why in BROKEN.items():
        assert any(why in reason for reason in report.skipped), (folder, dict(report.skipped))

    harbor = by_id["harbor-sum"].data
    assert (harbor["format"], harbor["verifier"], harbor["verifier_script"]) == \
        ("harbor", "reward", "test.sh")
    assert (harbor["agent_timeout"], harbor["verifier_timeout"]) == (300.0, 280.0)
    assert (harbor["memory_mb"], harbor["disk_mb"], harbor["cpus"]) == (1024, 1024, 1.0)
    assert set(harbor["solution_files"]) == {"add.py"} and harbor["solution"].startswith("#!")
    tb1 = by_id["tb1-count"]
    assert (tb1.data["format"], tb1.data["verifier"], tb1.data["verifier_script"]) == \
        ("terminal-bench", "tb1", "run-tests.sh")
    assert (tb1.data["agent_timeout"], tb1.data["verifier_timeout"]) == (240.0, 90.0)
    assert tb1.image == f"dockerfile:{(root / 'tb1-count').resolve()}"  # the folder is the context
    assert "Count the lines" in tb1.instruction
    assert by_id["et-params"].data["verifier"] == "reward"
    bundled = by_id["bundled-words"].data
    assert (bundled["format"], bundled["verifier"], bundled["agent_timeout"]) == \
        ("bundled", "pytest", None)

    env = make_env("terminal", TERMINAL)
    task = by_id["harbor-sum"]
    assert env.verifier_timeout(task) == 280.0 and env.verifier_timeout(by_id["bundled-words"]) == 120.0
    assert agent_config_for(env, task, AgentConfig()).wall_clock_budget == 300.0
    assert agent_config_for(env, by_id["bundled-words"], AgentConfig()).wall_clock_budget == 1800.0
    assert env.sandbox_spec(task).memory_mb == 1024
    # What task.toml asks for must fit the slots, or the launch stops before it starts.
    small = SlotLimits(memory_mb=512)
    with pytest.raises(PreflightError, match=r"1 task\(s\) need slots with more than "
                       r"sandbox.memory_mb=512 MB \(task harbor-sum asks for 1024\).*"
                       r"tasks.task_resources=false"):
        check_sandbox_specs(tasks, TaskEnvs(TaskSourceConfig(**TERMINAL)), small)
    check_sandbox_specs(tasks, TaskEnvs(TaskSourceConfig(**TERMINAL, task_resources=False)), small)

    # tasks.verifier=pytest: the pytest files instead of the scripts, parametrized ones too.
    pytest_mode = {t.task_id: t.data for t in _load(root, verifier="pytest")[0]}
    assert pytest_mode["et-params"]["verifier"] == "pytest"
    assert pytest_mode["et-params"]["tests"] == ["test_final_state.py::test_file_holds_its_word",
                                                 "test_final_state.py::TestListing::test_listed"]
    assert pytest_mode["tb1-count"]["pytest_files"] == ["test_outputs.py"]
    assert pytest_mode["harbor-partial"]["verifier"] == "reward"  # it has no pytest file

    # tasks.source may name one task; a broken one fails the launch with its own reason.
    [one], _ = _load(root / "tb1-count")
    assert one.task_id == "tb1-count"
    none, skipped = _load(root / "broken-toml")
    with pytest.raises(PreflightError, match="1 skipped, task.toml is not valid TOML"):
        check_tasks(none, str(root / "broken-toml"), dict(skipped.skipped))


@pytest.mark.parametrize("toml,error", [
    ("[[steps]]\nname = 'a'\n", "multi-step tasks"),
    ("[verifier]\nenvironment_mode = 'separate'\n", "environment_mode"),
    ("[environment]\ngpus = 1\n", "slots have no GPUs"),
    ("[verifier]\ntimeout_sec = 'x'\n", "timeout_sec must be a number > 0"),
    ("[agent]\ntimeout_sec = -1\n", "timeout_sec must be a number > 0"),
    ("[verifier.env]\n'bad-name' = '1'\n", "is not a variable name"),
    ("[environment]\nmemory = 'lots'\n", "must be a size like"),
])
def test_task_toml_content_that_cannot_run_is_refused_with_the_key(tmp_path, toml, error):
    (tmp_path / "task.toml").write_text(toml)
    with pytest.raises(RowError, match=error):
        read_task_toml(tmp_path / "task.toml")


def test_harbor_older_size_spellings_are_read_in_mb(tmp_path):
    (tmp_path / "task.toml").write_text("[environment]\nmemory = '2G'\nstorage = '512M'\n")
    got = read_task_toml(tmp_path / "task.toml")
    assert (got["memory_mb"], got["disk_mb"]) == (2048, 512)


def test_the_tasks_own_timeouts_count_in_the_backends_lease_budget(tmp_path):
    """A Modal sandbox must outlive a task whose task.toml allows a long agent run."""
    from rollout.sandbox.modal import ModalConfig

    root = write_layouts(tmp_path / "tasks", tmp_path / "base")
    tasks, _ = _load(root)
    envs = TaskEnvs(TaskSourceConfig(**TERMINAL))
    cfg = SimpleNamespace(agent=AgentConfig(wall_clock_budget=60), backend=ModalConfig(
        lease_reserve=800))
    check_task_budgets(tasks, envs, cfg)  # harbor-sum: 300 s agent, 60 prepare, 280 verifier, 60
    long = type(tasks[0])(**{**tasks[0].to_dict(), "data": {**tasks[0].data,
                                                            "agent_timeout": 3000.0}})
    with pytest.raises(PreflightError, match="lease_reserve .*task.toml / task.yaml"):
        check_task_budgets([long], envs, cfg)


def test_a_gold_solution_that_cannot_run_as_given_is_a_task_error(tmp_path):
    folder = write_layouts(tmp_path / "tasks", tmp_path / "base") / "tb1-count"
    (folder / "solution.sh").rename(folder / "solution.yaml")
    [task], _ = _load(folder)
    with pytest.raises(ValueError, match="task error: tb1-count: solution.yaml"):
        make_env("terminal", TERMINAL).reference_solution(task)


def test_reward_files_are_read_as_harbor_reads_them():
    assert parse_reward({"reward.txt": "0.25\n"}) == (0.25, "reward.txt")
    assert parse_reward({"reward.json": json.dumps({"reward": 1, "quality": 0.5}),
                         "reward.txt": "0"}) == (1.0, "reward.json")
    assert parse_reward({"reward.json": json.dumps({"quality": 0.5}),
                         "reward.txt": "0.75"}) == (0.75, "reward.txt")
    assert parse_reward({"reward.json": json.dumps({"score": 0.5})}) == (0.5, "reward.json")
    for blocks, kind in [({}, "no_reward"), ({"reward.txt": ""}, "bad_reward"),
                         ({"reward.txt": "passed"}, "bad_reward"), ({"reward.txt": "nan"}, "bad_reward"),
                         ({"reward.json": "[1]"}, "bad_reward"),
                         ({"reward.json": json.dumps({"a": 1, "b": 0})}, "bad_reward")]:
        with pytest.raises(GradingError) as e:
            parse_reward(blocks)
        assert e.value.kind == kind, blocks


@pytest.mark.asyncio
async def test_a_gold_solution_cut_by_max_tokens_is_a_task_error(tmp_path):
    root = write_layouts(tmp_path / "tasks", tmp_path / "base")
    [task], _ = _load(root / "harbor-sum")
    env = make_env("terminal", TERMINAL)
    policy = make_policy(PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER, max_tokens=40), env)
    conv = policy.open(env.messages(task), env.tools(task), task)
    with pytest.raises(PolicyError, match="task error: the gold solution's turn 1 is .* tokens"):
        await conv.sample(timeout=30.0)


# --- real image slots -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal-layouts")
    base = build_python_image(root / "base")
    return write_layouts(root / "tasks", base.path), root / "store"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(layouts):
    _, store = layouts
    p = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=3, image_store=str(store),
                    start_timeout=240),
        SlotLimits(isolation="bwrap"))
    await p.start()
    yield p
    await p.stop()


def _policy(env, kind="gold"):
    script = {"responses": ["Nothing to do."]} if kind == "scripted" else {}  # scripted's own key
    return make_policy(PolicyConfig(type=kind, tokenizer=QWEN_TOKENIZER, max_tokens=4096, **script),
                       env)


async def _rollouts(pool, env, runs):
    sem = asyncio.Semaphore(3)

    async def one(task, kind):
        tid = f"{kind}-{task.task_id}-{task.data['verifier']}"
        async with sem, pool.session(tid, image=task.image, timeout=600) as sandbox:
            return await run_rollout(task, env, _policy(env, kind), sandbox,
                                     AgentConfig(max_context_tokens=16000), trajectory_id=tid)

    return await asyncio.gather(*(one(t, k) for t, k in runs))


@pytest.mark.timeout(600)
@pytest.mark.asyncio(loop_scope="module")
async def test_no_op_scores_zero_in_every_layout_and_pytest_mode_grades_parametrized_cases(
        pool, layouts):
    root, _ = layouts
    env = make_env("terminal", TERMINAL)
    tasks = _load(root)[0]
    pytest_mode = {t.task_id: t for t in _load(root, verifier="pytest")[0]}
    pytest_env = make_env("terminal", {**TERMINAL, "verifier": "pytest"})
    noop = await _rollouts(pool, env, [(t, "scripted") for t in tasks])
    for task, traj in zip(tasks, noop):
        assert traj.outcome == Outcome.DONE and traj.score == EXPECTED[task.task_id][1], \
            (task.task_id, traj.outcome, traj.error, traj.metadata.get("verdict"))
    graded = [pytest_mode["et-params"], pytest_mode["tb1-count"]]
    runs = await _rollouts(pool, pytest_env, [(t, k) for t in graded for k in ("gold", "scripted")])
    for (task, kind), traj in zip([(t, k) for t in graded for k in ("gold", "scripted")], runs):
        verdict = traj.metadata.get("verdict") or {}
        assert traj.score == (1.0 if kind == "gold" else 0.0), (task.task_id, kind, traj.error, verdict)
    et_gold = runs[0].metadata["verdict"]
    assert et_gold["verifier"] == "pytest" and et_gold["f2p_passed"] == et_gold["f2p_total"] == 2
    assert sorted(et_gold["tests"]) == [
        "test_final_state.py::TestListing::test_listed[a.txt]",
        "test_final_state.py::TestListing::test_listed[b.txt]",
        "test_final_state.py::test_file_holds_its_word[a.txt-alpha]",
        "test_final_state.py::test_file_holds_its_word[b.txt-beta]"]
    assert pool.stats()["slots_in_use"] == 0


@pytest.mark.timeout(300)
@pytest.mark.asyncio(loop_scope="module")
async def test_the_tasks_own_verifier_timeout_replaces_tasks_test_timeout(pool, layouts):
    root, _ = layouts
    [task] = [t for t in _load(root)[0] if t.task_id == "harbor-sum"]
    # test.sh naps 2 s: a 1 s tasks.test_timeout would time it out; task.toml gives 280 s.
    env = make_env("terminal", {**TERMINAL, "test_timeout": 1})
    [traj] = await _rollouts(pool, env, [(task, "gold")])
    assert traj.outcome == Outcome.DONE and traj.score == 1.0, (traj.error, traj.metadata)
    verdict = traj.metadata["verdict"]
    assert verdict["reward_file"] == "reward.txt" and verdict["duration"] > 1
    # The same task with a task.toml that says 1 s is a grading timeout, never a 0.0; so is
    # a test.sh that writes no reward file.
    short = type(task)(**{**task.to_dict(), "data": {**task.data, "verifier_timeout": 1.0}})
    # a test.sh that writes no reward file, or scores 0 because its own tools are missing
    # (Endless Terminals' test.sh on an offline slot: uvx is fetched with curl first).
    def variant(name, script):
        return type(task)(**{**task.to_dict(), "task_id": name, "data": {
            **task.data, "tests_dir": {**task.data["tests_dir"], "test.sh": script}}})

    offline = ("#!/bin/sh\nuvx --with pytest pytest /tests/test_state.py\n"
               "if [ $? -eq 0 ]; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n")
    trajs = await _rollouts(pool, env, [(short, "gold"), (variant("silent", "#!/bin/sh\necho hi\n"),
                                                           "scripted"),
                                        (variant("offline", offline), "gold")])
    assert [(t.outcome, t.metadata.get("grading_error")) for t in trajs] == \
        [(Outcome.GRADING_ERROR, "timeout"), (Outcome.GRADING_ERROR, "no_reward"),
         (Outcome.GRADING_ERROR, "cannot_run")], [t.error for t in trajs]
    assert "uvx: not found" in trajs[2].error


# --- through launch.py -----------------------------------------------------------------------


@pytest.mark.timeout(290)
def test_launch_gold_scores_every_layout_and_counts_the_skipped_folders(layouts, tmp_path):
    """`launch.py conf=terminal tasks.source=DIR` over every layout at once, policy=gold: 1.0
    for each task, 0.5 for the fractional Harbor reward (in groups.jsonl, the trainer's feed;
    as a gold score below 1.0 it is listed at the end and the run exits 1), and the broken
    folders named and counted in the summary."""
    root, store = layouts
    run_dir = tmp_path / "run"
    proc = launch(f"tasks.source={root}", f"backend.image_store={store}", "policy=gold",
                  f"policy.tokenizer={qwen_tokenizer_dir()}", "env.group_size=1", "workers.num=1",
                  "backend.slots_per_host=2", run_dir=run_dir, conf="terminal")
    try:
        out, _ = proc.communicate(timeout=270)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # A gold run lists the tasks whose gold did not score 1.0 and exits 1: here exactly the
    # one whose verifier gives partial credit by design.
    partial = sorted(task for task, (gold, _) in EXPECTED.items() if gold != 1.0)
    assert proc.returncode == (1 if partial else 0), out[-4000:]
    if partial:
        failed = out.split("error: gold failed on", 1)[1]
        assert failed.startswith(f" {len(partial)} task(s)"), failed[:500]
        assert all(f"  {task}: " in failed for task in partial), failed[:500]
    scores = {g["task_id"]: g["scores"] for g in groups_jsonl(run_dir)}
    assert scores == {task: [gold] for task, (gold, _) in EXPECTED.items()}, out[-3000:]
    summary = (run_dir / "summary.txt").read_text()
    assert f"skipped at load: {len(BROKEN)} task folder(s)" in summary, summary
    skipped = json.loads((run_dir / "load_report.json").read_text())["skipped"]
    assert sum(skipped.values()) == len(BROKEN)
    assert all(any(why in reason for reason in skipped) for why in BROKEN.values()), skipped
