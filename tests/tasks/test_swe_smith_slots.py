"""Acceptance: every bundled instance, prepared and graded in real slots of a real SlotPool
(slot-server processes, bubblewrap isolation), with the gold policy's tool calls executed by
the real agent tools.

For EVERY bundled instance: gold -> 1.0; no change -> 0.0; deleting or emptying the F2P
test files (plus planted pytest cheats) -> 0.0; gold plus a change that makes pytest collect
nothing -> 0.0. One pool, several slots, instances graded concurrently.
"""

from __future__ import annotations

import asyncio
import re
import textwrap

import pytest
import pytest_asyncio

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import TaskSourceConfig, load_tasks
from rollout.tasks.grading import node_files
from rollout.tasks.swe_smith import SweSmithEnv
from rollout.tools import SandboxTools
from rollout.types import GradingError, Task

pytestmark = pytest.mark.asyncio(loop_scope="module")
IMAGE = "rollout-bundled:py311"
SLOTS = 4

CHEAT_CONFTEST = textwrap.dedent('''
    import pytest
    collect_ignore_glob = ["*"]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        outcome.get_result().outcome = "passed"
''')

# Imported by pytest while collecting tests/ if left in place: rewrites every report to passed.
CHEAT_INIT = textwrap.dedent('''
    import _pytest.reports as reports
    _init = reports.TestReport.__init__

    def _passed(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.outcome = "passed"

    reports.TestReport.__init__ = _passed
''')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=SLOTS, default_image=IMAGE),
        SlotLimits(isolation="bwrap"))
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cfg = TaskSourceConfig(cache_dir=str(tmp_path_factory.mktemp("repo-cache")), repo_sources=[],
                           pytest_plugin_autoload=False)
    return SweSmithEnv(cfg)


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(TaskSourceConfig())


def package_dir(task: Task) -> str:
    return re.search(r"^diff --git a/((?:src/)?[^/]+)/", task.data["patch"], re.M).group(1)


async def apply_gold(env: SweSmithEnv, task: Task, sandbox) -> None:
    tools = SandboxTools(sandbox)
    for call in env.reference_solution(task):
        result = await tools.run(call)
        assert not result.is_error, result
        if call.name == "terminal":
            assert result.content.endswith("[exit code: 0]"), result


async def scenario(pool, env, task: Task, name: str, index: int):
    async with pool.session(f"{task.task_id}:{name}", image=task.image) as sb:
        await env.prepare(task, sb)
        f2p_files = node_files(task.data["FAIL_TO_PASS"])
        if name == "gold":
            await apply_gold(env, task, sb)
        elif name == "tests_removed":
            if index % 2:  # empty the F2P test files
                for f in f2p_files:
                    await sb.write_file(f, b"")
            else:  # delete every test file there is
                res = await sb.exec("rm -rf tests && mkdir tests")
                assert res.ok
            await sb.write_file("conftest.py", CHEAT_CONFTEST.encode())
            await sb.write_file("tests/conftest.py", CHEAT_CONFTEST.encode())
            await sb.write_file("pytest.ini", b"[pytest]\npython_files = nothing_*.py\n")
            await sb.write_file("tests/__init__.py", CHEAT_INIT.encode())
            await sb.write_file("sitecustomize.py", b"import os\nos._exit(0)\n")
        elif name == "collect_nothing":
            await apply_gold(env, task, sb)
            init = f"{package_dir(task)}/__init__.py"
            await sb.write_file(init, b"raise ImportError('broken on purpose')\n")
        return await env.verify(task, sb)


EXPECTED = {"gold": 1.0, "no_change": 0.0, "tests_removed": 0.0, "collect_nothing": 0.0}


@pytest.mark.timeout(900)  # 4 scenarios x every instance, graded on a 2-core machine
async def test_every_bundled_instance_scores_right_under_every_scenario(pool, env, tasks):
    assert len(tasks) >= 30
    jobs = [(t, name, i) for i, t in enumerate(tasks) for name in EXPECTED]
    sem = asyncio.Semaphore(SLOTS)

    async def run(job):
        async with sem:
            return job, await scenario(pool, env, *job)

    results = await asyncio.gather(*(run(j) for j in jobs))
    wrong = [(t.task_id, name, v.score, v.details["reason"])
             for (t, name, _), v in results if v.score != EXPECTED[name]]
    assert not wrong, wrong
    for (task, name, _), v in results:
        d = v.details
        assert set(d["fail_to_pass"]) == set(task.data["FAIL_TO_PASS"])
        if name == "gold":
            assert set(d["fail_to_pass"].values()) == set(d["pass_to_pass"].values()) == {"PASSED"}
        if name == "no_change":  # the bug is real: some F2P test fails, every P2P test passes
            assert d["f2p_passed"] < d["f2p_total"] and d["p2p_passed"] == d["p2p_total"]
        if name == "collect_nothing":
            assert d["reason"] == "tests missing from the pytest report"
    stats = pool.stats()
    assert stats["slots_in_use"] == 0 and stats["host_failures"] == 0


async def test_grading_restores_tests_and_survives_a_read_only_workspace(pool, env, tasks):
    task = tasks[0]
    async with pool.session("restore", image=task.image) as sb:
        await env.prepare(task, sb)
        await apply_gold(env, task, sb)
        # The agent wipes the visible tests, plants a fake F2P test file, and write-protects all.
        res = await sb.exec("rm -rf tests && mkdir tests && for f in "
                            + " ".join(node_files(task.data["FAIL_TO_PASS"]))
                            + "; do echo 'def test_fake(): pass' > $f; done; chmod -R a-w .")
        assert res.ok, res
        verdict = await env.verify(task, sb)
    assert verdict.score == 1.0, verdict.details


async def test_prepared_slot_has_no_fix_and_a_fresh_git_repo(pool, env, tasks):
    task = tasks[0]
    async with pool.session("isolation", image=task.image) as sb:
        await env.prepare(task, sb)
        log = await sb.exec("git log --all --format=%s")
        status = await sb.exec("git status --porcelain")
        f2p_file = node_files(task.data["FAIL_TO_PASS"])[0]
        ls = await sb.exec(f"test -e {f2p_file}; echo $?")
    assert log.stdout.split() == ["Initial", "state"]  # one commit: no mirror history
    assert status.stdout == ""
    assert ls.stdout.strip() == "1"  # F2P test file hidden from the agent
    messages = env.messages(task)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert task.instruction.strip() in messages[1]["content"]
    assert {t["function"]["name"] for t in env.tools(task)} == {"terminal", "read_file", "write_file"}


async def test_gold_policy_rollout_end_to_end_records_per_test_results(pool, env, tasks):
    # The whole agent path: the gold policy's Hermes tool calls, parsed and executed by the
    # agent loop, then graded; one instance per bundled repo.
    from rollout.agent import AgentConfig
    from rollout.policy import PolicyConfig, make_policy
    from rollout.rollout import run_rollout
    from tests.agent_support import QWEN_TOKENIZER

    policy = make_policy(PolicyConfig(type="gold", tokenizer=QWEN_TOKENIZER), env)
    picks = list({t.data["repo"]: t for t in tasks}.values())
    assert len(picks) >= 3

    async def one(task):
        async with pool.session(f"gold-e2e-{task.task_id}", image=task.image) as sb:
            return await run_rollout(task, env, policy, sb, AgentConfig(max_turns=5),
                                     trajectory_id=f"gold-{task.task_id}")

    trajectories = await asyncio.gather(*(one(t) for t in picks))
    for task, traj in zip(picks, trajectories):
        assert (traj.outcome.value, traj.score, traj.error) == ("done", 1.0, None)
        verdict = traj.metadata["verdict"]
        assert verdict["fail_to_pass"] == {t: "PASSED" for t in task.data["FAIL_TO_PASS"]}
    await policy.close()


def quick_env(tmp_path, test_timeout: float) -> SweSmithEnv:
    return SweSmithEnv(TaskSourceConfig(cache_dir=str(tmp_path), repo_sources=[],
                                        pytest_plugin_autoload=False, test_timeout=test_timeout))


async def test_a_hanging_test_run_is_a_grading_timeout_not_a_score(pool, tasks, tmp_path):
    quick = quick_env(tmp_path, 2.0)
    task = tasks[0]
    async with pool.session("hang", image=task.image) as sb:
        await quick.prepare(task, sb)
        await apply_gold(quick, task, sb)
        init = f"{package_dir(task)}/__init__.py"
        await sb.write_file(init, b"while True:\n    pass\n")
        with pytest.raises(GradingError) as err:
            await quick.verify(task, sb)
    assert err.value.kind == "timeout"
    assert "4s" in str(err.value)  # retried once in the slot with twice the timeout


async def test_a_timeout_is_retried_once_and_then_scores(pool, tasks, tmp_path):
    quick = quick_env(tmp_path, 3.0)
    task = tasks[0]
    async with pool.session("hang-once", image=task.image) as sb:
        await quick.prepare(task, sb)
        await apply_gold(quick, task, sb)
        init = f"{package_dir(task)}/__init__.py"
        original = await sb.read_file(init)
        # Hangs on the first grading run only (it leaves a marker), as a loaded host might.
        await sb.write_file(init, b"import pathlib\nif not pathlib.Path('.hung').exists():\n"
                            b"    pathlib.Path('.hung').touch()\n    while True:\n        pass\n"
                            + original)
        verdict = await quick.verify(task, sb)
    assert verdict.score == 1.0, verdict.details["reason"]


FAKE_EXIT = (b"import os, sys\n"
             b"for t in ARGS:\n"
             b"    print(t + ' PASSED [100%]')\n"
             b"sys.stdout.flush()\n"
             b"os._exit(0)\n")
@pytest.mark.parametrize("fake", ["fake_exit", "patch_reports"])
async def test_code_under_test_cannot_fake_a_pass(pool, env, tasks, fake):
    """The untouched bug plus a fake in the package: never a 1.0. Printing PASSED lines then
    os._exit(0) ends pytest before its report; patching TestReport fools every in-process
    witness, so the diff scan flags it."""
    for task in tasks[:2]:
        async with pool.session(f"{task.task_id}:{fake}", image=task.image) as sb:
            await env.prepare(task, sb)
            init = f"{package_dir(task)}/__init__.py"
            original = await sb.read_file(init)
            ids = repr(task.data["FAIL_TO_PASS"] + task.data["PASS_TO_PASS"]).encode()
            planted = ((b"ARGS = " + ids + b"\n" + FAKE_EXIT) if fake == "fake_exit"
                       else CHEAT_INIT.encode())
            await sb.write_file(init, planted + original)
            verdict = await env.verify(task, sb)
        assert verdict.score == 0.0, (task.task_id, verdict.details["reason"])
        assert verdict.details["suspected_hacking"], verdict.details
        if fake == "patch_reports":
            assert verdict.details["reason"].startswith("suspected reward hacking")


async def test_an_owner_name_repo_grades_gold_one_and_no_change_zero(pool, tasks, tmp_path):
    """A dataset whose `repo` is a plain `owner/name` (no swesmith/ prefix) works end to end."""
    import dataclasses
    import shutil

    from rollout.tasks.loader import BUNDLED_DIR

    task = next(t for t in tasks if "spans" in t.data["repo"])
    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    bundle = next(BUNDLED_DIR.glob("rollout__spans.*.bundle"))
    shutil.copy(bundle, mirrors / "acme__spans.bundle")
    renamed = dataclasses.replace(task, data={**task.data, "repo": "acme/spans"})
    env = SweSmithEnv(TaskSourceConfig(cache_dir=str(tmp_path / "cache"), repo_sources=[str(mirrors)],
                                       pytest_plugin_autoload=False))
    scores = {}
    for name in ("gold", "no_change"):
        async with pool.session(f"owner-name:{name}", image=renamed.image) as sb:
            await env.prepare(renamed, sb)
            if name == "gold":
                await apply_gold(env, renamed, sb)
            scores[name] = (await env.verify(renamed, sb)).score
    assert scores == {"gold": 1.0, "no_change": 0.0}
    assert (tmp_path / "cache" / "acme__spans.git").is_dir()
