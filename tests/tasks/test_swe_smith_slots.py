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
from rollout.agent.tools import SandboxTools
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


# Gold and no change on every instance; the two cheats (their graders' defences do not
# depend on the instance) on two instances of each repo, one per variant of tests_removed.
SAMPLED = ("tests_removed", "collect_nothing")


@pytest.mark.timeout(900)
async def test_every_bundled_instance_scores_right_under_every_scenario(pool, env, tasks):
    assert len(tasks) >= 30
    per_repo: dict[str, int] = {}
    jobs = []
    for i, t in enumerate(tasks):
        seen = per_repo[t.data["repo"]] = per_repo.get(t.data["repo"], 0) + 1
        jobs += [(t, name, i) for name in EXPECTED if name not in SAMPLED or seen <= 2]
    assert len(per_repo) >= 5 and len(jobs) < 4 * len(tasks)
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
    from rollout.agent.loop import AgentConfig
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


# --- issue 26: cheats against grading, through the real slot path ---------------------------
# Each plants code in the package (or acts in the slot) without fixing the bug; none may score
# 1.0. Most evade the diff scan's words on purpose, so the layer that stops them is the one
# named: the host-side diff, the supervisor/test-process split, the canaries, the fresh slot.

AMEND = ("git add -A && git -c user.name=a -c user.email=a@b -c commit.gpgsign=false "
         "commit -q --amend --no-edit")
REINIT = ("rm -rf .git && git init -q && git add -A && git -c user.name=a -c user.email=a@b "
          "-c commit.gpgsign=false commit -q -m 'Initial state'")

# Issue case 2: walk the frames up to the runner, take its secrets, write its report lines
# (and the test process's own account) everywhere, then replace the process with /bin/true.
FRAME_WALK = '''
import json as _j, os as _o, sys as _s
def _forge():
    f, seen = _s._getframe(), {}
    while f is not None:
        for k, v in list(f.f_locals.items()):
            seen.setdefault(k, v)
        f = f.f_back
    spec = seen.get("spec") if isinstance(seen.get("spec"), dict) else {}
    nonce = seen.get("nonce") or spec.get("nonce") or "0" * 32
    tests = sorted(spec.get("tests") or seen.get("wanted") or [])
    runner = "".join(f"{nonce} T PASSED {t}\\n" for t in tests)
    runner = f"{nonce} BOOT\\n{nonce} START\\n" + runner + f"{nonce} END 0 0 {len(tests)}\\n{nonce} EXIT 0\\n"
    account = "".join(_j.dumps(x) + "\\n" for x in [{"k": "start"}] + [
        {"k": "t", "s": "PASSED", "n": t} for t in tests] + [{"k": "end", "v": [0, 0, len(tests)]}])
    for fd in range(1, 64):
        for text in (runner, account if FORGE_ACCOUNT else ""):
            try:
                _o.write(fd, text.encode())
            except OSError:
                pass
    _o.execv("/bin/true", ["true"])
_forge()
'''

# Issue case 3: unittest's run replaced by one that only reports success (no flagged word).
TESTCASE_RUN = '''
import unittest as _u
def _run(self, result=None):
    result = result if result is not None else self.defaultTestResult()
    result.startTest(self)
    result.addSuccess(self)
    result.stopTest(self)
    return result
_u.TestCase.run = _run
'''

# pytest's reports rewritten through an import the scan's words do not see.
HIDDEN_REPORT_PATCH = '''
import importlib as _il
_r = _il.import_module("_py" + "test.reports")
_cls = getattr(_r, "Test" + "Report")
_init = _cls.__init__
def _passed(self, *a, **k):
    _init(self, *a, **k)
    self.outcome = "passed"
_cls.__init__ = _passed
'''

# Read the supervisor through /proc (its memory for the nonce, its fds for the report pipe).
PROC_PEEK = '''
import os as _o, re as _re
def _say(*words):  # what it managed, for the test to read from the grading checkout
    with open(".peek", "a") as f:
        f.write(" ".join(map(str, words)) + "\\n")
def _peek():
    ppid, nonces = _o.getppid(), set()
    try:
        maps = open(f"/proc/{ppid}/maps").read().splitlines()
        with open(f"/proc/{ppid}/mem", "rb") as mem:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if "rw" in line.split()[1] and hi - lo < 64 << 20:
                    try:
                        mem.seek(lo); nonces.update(_re.findall(rb"[0-9a-f]{32}", mem.read(hi - lo)))
                    except OSError:
                        pass
        _say("PROC-MEM-READ", len(nonces))
    except OSError as e:
        _say("PROC-MEM-DENIED", type(e).__name__)
    for n in range(0, 32):
        try:
            fd = _o.open(f"/proc/{ppid}/fd/{n}", _o.O_WRONLY)
        except OSError:
            continue
        _say("PROC-FD-OPENED", n)
        for nonce in nonces:
            _o.write(fd, nonce + b" T PASSED x\\n")
_peek()
'''

# Replace the test process with an interpreter that only tells the supervisor "all passed".
EXEC_FORGER = '''
import json as _j, os as _o, sys as _s
def _swap():
    f, spec = _s._getframe(), None
    while f is not None and spec is None:
        spec = f.f_locals.get("spec") if isinstance(f.f_locals.get("spec"), dict) else None
        f = f.f_back
    tests = sorted((spec or {}).get("tests", []))
    lines = [{"k": "start"}] + [{"k": "t", "s": "PASSED", "n": t} for t in tests]
    lines.append({"k": "end", "v": [0, 0, len(tests)]})
    text = "".join(_j.dumps(x) + "\\n" for x in lines)
    code = f"import os\\nfor fd in range(3, 64):\\n    try: os.write(fd, {text!r}.encode())\\n    except OSError: pass\\n"
    _o.execv(_s.executable, [_s.executable, "-c", code])
_swap()
'''

# A fake interpreter wherever one could go (every PATH directory, a workdir virtualenv),
# a sitecustomize and a .pth file in site-packages: what a writable layer would allow.
FAKE_PY = "#!/bin/sh\\nexit 0\\n"
TAMPER_INTERPRETER = (
    "SITE=$(python -c 'import site; print(site.getsitepackages()[0])'); "
    "printf '%s\\n' 'import unittest' 'unittest.TestCase.run = lambda s, r=None: None' "
    "> $SITE/sitecustomize.py; echo 'import sitecustomize' > $SITE/zz_cheat.pth; "
    f"for d in $(echo $PATH | tr : ' ') .venv/bin; do mkdir -p $d; printf '{FAKE_PY}' > $d/python; "
    "chmod +x $d/python; done; echo 'export PATH=/workspace/.venv/bin:$PATH' >> /etc/profile")


def planted(code: str, forge_account: bool = False):
    async def setup(env, task, sb):
        init = f"{package_dir(task)}/__init__.py"
        prefix = f"FORGE_ACCOUNT = {forge_account}\n" if "FORGE_ACCOUNT" in code else ""
        await sb.write_file(init, (prefix + code).encode() + await sb.read_file(init))
    return setup


def shell(command: str, *, gold: bool = False, plant: str | None = None, check: bool = True):
    async def setup(env, task, sb):
        if gold:
            await apply_gold(env, task, sb)
        if plant is not None:
            await planted(plant)(env, task, sb)
        res = await sb.exec(command, timeout=60.0)
        assert res.ok or not check, (command, res)
    return setup


CHEATS = {
    # issue case 1: a report patch, then the base commit amended to hold it
    "amend_base": (shell(AMEND, plant=CHEAT_INIT.replace("\n\n", "\n")), "textkit"),
    "reinit_history": (shell(REINIT, plant=CHEAT_INIT), "spans"),
    # issue case 2, as described (runner lines) and adapted (the test process's own account)
    "frame_walk_execv": (planted(FRAME_WALK), "tinycalc"),
    "frame_walk_forged_account": (planted(FRAME_WALK, forge_account=True), "textkit"),
    # issue case 3 and the same family
    "testcase_run_success": (planted(TESTCASE_RUN), "units"),
    "hidden_report_patch": (planted(HIDDEN_REPORT_PATCH), "spans"),
    "proc_peek": (planted(PROC_PEEK), "tinycalc"),
    "exec_forger": (planted(EXEC_FORGER), "versions"),
    # issue case 6's family and case 5: the slot itself tampered with
    "interpreter_tampered": (shell(TAMPER_INTERPRETER, check=False), "textkit"),
    "background_rewriter": (shell(
        "nohup sh -c 'while :; do for f in $(find . -name \"test_*.py\"); do "
        "echo \"def test_ok(): pass\" > $f; done; sleep 0.05; done' >/dev/null 2>&1 &"), "spans"),
    "disk_filled": (shell("fallocate -l $(df -B1 --output=avail /tmp | tail -1) /tmp/fill "
                          "|| dd if=/dev/zero of=/tmp/fill bs=1M 2>/dev/null; true"), "tinycalc"),
    "workspace_too_large": (shell("head -c 80M /dev/urandom > blob.bin"), "units"),
    "lingering_account_holder": (planted(
        "import os as _o, subprocess as _sp, sys as _s\n"
        "_sp.Popen(['sleep', '600'], close_fds=False)\n"), "textkit"),
    "workspace_unreadable": (shell("find . -mindepth 1 -depth -exec chmod 000 {} + && chmod 000 ."), "versions"),
}


@pytest.mark.timeout(280)
async def test_cheats_against_grading_never_score(pool, env, tasks):
    """Every cheat of issue 26 and our own in the same families: 0.0 (or a grading error),
    never 1.0; the scan-evading ones are caught by the layer named in the reason."""
    by_repo = {}
    for t in tasks:
        by_repo.setdefault(t.data["repo"].split("__", 1)[1].split(".", 1)[0], t)
    sem = asyncio.Semaphore(SLOTS)

    async def one(name):
        setup, repo = CHEATS[name]
        task = by_repo[repo]
        async with sem, pool.session(f"cheat:{name}", image=task.image) as sb:
            await env.prepare(task, sb)
            await setup(env, task, sb)
            try:
                verdict = await env.verify(task, sb)
            except GradingError as e:
                return name, e
            if name == "proc_peek":
                verdict.details["peek"] = (await sb.read_file(".peek")).decode()
            return name, verdict

    results = dict(await asyncio.gather(*(one(n) for n in CHEATS)))
    scores = {n: (v.score if not isinstance(v, GradingError) else f"error:{v.kind}")
              for n, v in results.items()}
    assert all(s == 0.0 for s in scores.values()), scores
    d = {n: v.details for n, v in results.items()}
    # The history rewrites hide nothing from the host-side diff: the scan names the patch.
    for name in ("amend_base", "reinit_history"):
        assert any("pytest internals" in r for r in d[name]["suspected_hacking"]), d[name]
    # Forged accounts and blanket patches that the scan cannot read: the canaries catch them.
    for name in ("frame_walk_forged_account", "testcase_run_success", "hidden_report_patch",
                 "exec_forger"):
        # ...and only they: the scan finds nothing in these diffs (as if it were off).
        assert all("canary" in r for r in d[name]["suspected_hacking"]), (name, d[name])
    # The runner's own lines, forged with what the test process can find: nothing to find.
    assert d["frame_walk_execv"]["reason"].startswith("the test process ended"), d["frame_walk_execv"]
    # The supervisor is out of reach through /proc.
    assert "PROC-MEM-DENIED" in d["proc_peek"]["peek"], d["proc_peek"]["peek"]
    assert "PROC-FD-OPENED" not in d["proc_peek"]["peek"]
    # A workspace too large to export is the agent's own 0.0, never an infrastructure outcome.
    assert d["workspace_too_large"].get("agent_caused"), d["workspace_too_large"]
    # A process the test process leaves holding its report pipe does not stall grading.
    assert d["lingering_account_holder"]["reason"] == "tests failed", d["lingering_account_holder"]
    # The slot's own state (interpreter, site-packages, processes, disk) never reaches
    # grading: the fresh slot grades the unfixed bug as such.
    for name in ("interpreter_tampered", "background_rewriter", "disk_filled", "workspace_unreadable"):
        assert d[name]["fresh_slot"] and d[name]["reason"] == "tests failed", (name, d[name])


def _envdemo_mirror(root) -> Task:
    """A one-instance mirror in SWE-smith's layout whose pass-to-pass test needs a plugin's
    fixture (pytest-benchmark's `benchmark`), graded with plugin autoload off."""
    import subprocess

    work = root / "envdemo"
    (work / "envdemo").mkdir(parents=True)
    (work / "tests").mkdir()

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=work,
                       check=True, capture_output=True)

    (work / "envdemo/__init__.py").write_text("def add(a, b):\n    return a + b\n")
    (work / "tests/test_add.py").write_text("from envdemo import add\n\ndef test_add():\n"
                                            "    assert add(2, 3) == 5\n")
    (work / "tests/test_speed.py").write_text("from envdemo import add\n\ndef test_speed(benchmark):\n"
                                              "    assert benchmark(add, 1, 1) == 2\n\n"
                                              "def test_plain():\n    assert add(0, 0) == 0\n")
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "Initial commit")
    iid = "acme__envdemo.00000000.env__1"
    git("checkout", "-qb", iid)
    (work / "envdemo/__init__.py").write_text("def add(a, b):\n    return a - b\n")
    git("commit", "-qam", "Bug Patch")
    patch = subprocess.run(["git", "diff", "main", "HEAD"], cwd=work, check=True,
                           capture_output=True, text=True).stdout
    git("rm", "-q", "tests/test_add.py")
    git("commit", "-qm", "Remove F2P Tests")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "acme__envdemo.git")],
                   check=True)
    return Task(task_id=iid, kind="swe_smith", instruction="add subtracts", image=IMAGE,
                data={"instance_id": iid, "repo": "acme/envdemo", "patch": patch,
                      "FAIL_TO_PASS": ["tests/test_add.py::test_add"],
                      "PASS_TO_PASS": ["tests/test_speed.py::test_speed",
                                       "tests/test_speed.py::test_plain"],
                      "image_name": IMAGE})


async def test_environment_failures_are_grading_errors_and_agent_breakage_scores_zero(pool, tmp_path):
    """Issue 26 case 4: a P2P test that needs a plugin's fixture the grading environment lacks
    fails at setup under gold: a grading error naming the fixture, never a 0.0. The same
    failure caused by the agent (its diff removes what the tests import) is its 0.0."""
    task = _envdemo_mirror(tmp_path)
    env = SweSmithEnv(TaskSourceConfig(cache_dir=str(tmp_path / "cache"),
                                       repo_sources=[str(tmp_path)], pytest_plugin_autoload=False))
    async with pool.session("env-gold", image=IMAGE) as sb:
        await env.prepare(task, sb)
        await apply_gold(env, task, sb)
        with pytest.raises(GradingError) as err:
            await env.verify(task, sb)
    assert err.value.kind == "environment" and "fixture 'benchmark' not found" in str(err.value)
    async with pool.session("env-agent", image=IMAGE) as sb:
        await env.prepare(task, sb)
        await sb.write_file("envdemo/__init__.py", b"import benchmark_helpers\n\n"
                                                    b"def add(a, b):\n    return a + b\n")
        verdict = await env.verify(task, sb)
    assert verdict.score == 0.0 and verdict.details["f2p_passed"] == 0


async def test_an_images_own_workdir_files_are_neither_exported_nor_carried_over(pool, env, tasks):
    """An image whose workdir holds more than the repo (a `.venv`, build products): what the
    agent does there never reaches grading; its change to the repo does."""
    task = tasks[0]
    async with pool.session("image-extras", image=task.image) as sb:
        await env.prepare(task, sb)
        env._image_extras[task.task_id] = frozenset({".venv"})  # as a prepared image slot had
        await apply_gold(env, task, sb)
        await sb.write_file(".venv/bin/python", b"#!/bin/sh\nexit 0\n")
        await sb.write_file(".venv/lib/cheat.pth", b"import _pytest\n")
        verdict = await env.verify(task, sb)
    assert verdict.score == 1.0, verdict.details["reason"]
    assert not any(p.startswith(".venv") for p in verdict.details["changed_files"])
    assert "suspected_hacking" not in verdict.details
