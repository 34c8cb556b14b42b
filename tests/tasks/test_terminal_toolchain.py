"""Issue 26: a terminal task's verifier runs with the image's own toolchain, not the one the
agent could rewrite in its slot's writable root (sandbox_image/grading_view.py).

Real image slots (the slot server builds two Dockerfile images over a python+pytest base:
one with its Python in a conda-style env, one with it in `/app/.venv` inside the workdir,
PATH pointing there), real bubblewrap, the real Harbor-style `test.sh` verifier. Each cheat
leaves the task undone and rewrites the slot's toolchain (or leaves a process rewriting the
reward file) so that the verifier's run passes: a plain command in the slot is fooled (the
cheat works), the grading run is not, and the trajectory scores 0.0. The gold solution still scores 1.0, in the `.venv` image through the
hardened pytest runner with the venv's interpreter (issue 26 case 6: once refused)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from rollout.agent.loop import AgentConfig
from rollout.policy import PolicyConfig, make_policy
from rollout.rollout import run_rollout
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool
from rollout.tasks import make_env
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.terminal import load_terminal
from rollout.types import Outcome
from sandbox_image import grading_view
from tests.agent_support import QWEN_TOKENIZER
from tests.sandbox_image.images.python_image import ENV, build_python_image
from tests.tasks.terminal_layouts import HARBOR_TEST_STATE

TERMINAL = {"kind": "terminal", "filter": "", "pytest_plugin_autoload": False}
SITE = f"/{ENV}/lib/python3.11/site-packages"

TEST_SH = """\
#!/bin/sh
cd /app
if python -m pytest -q -p no:cacheprovider /tests/test_state.py; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"""
TEST_STATE = HARBOR_TEST_STATE  # the layouts' state test: /app/sum.txt holds 12
DOCKERFILES = {
    "conda": f"ENV PATH=/{ENV}/bin:/usr/bin:/bin\n",
    # (the conda env gone: the slot server would put its bin/ first on PATH)
    "venv": f"RUN cp -a /{ENV} /app/.venv && rm -rf /opt/miniconda3\n"
            "ENV PATH=/app/.venv/bin:/usr/bin:/bin\n",
}

# A verifier in miniature, as the agent could find one: a script that runs pytest on a
# failing test. Run plainly in a cheated slot it says PASS; in the grading view, FAIL.
PROBE = ("mkdir -p /tmp/probe && printf 'def test_x():\\n    assert False\\n' > /tmp/probe/test_p.py"
         " && printf '#!/bin/sh\\npython -m pytest -q -p no:cacheprovider /tmp/probe/test_p.py "
         ">/dev/null 2>&1 && echo PASS || echo FAIL\\n' > /tmp/probe/t.sh && chmod +x /tmp/probe/t.sh")
CHEATS = {
    # (a) the image's python (what python3 and the env's python link to) passes everything
    "python": ("conda", "printf '#!/bin/sh\\nexit 0\\n' > /usr/bin/python3.11"),
    # (b) /bin/sh runs any script as a pass and writes the reward itself
    "sh": ("conda", "cp /bin/sh /bin/realsh && printf '#!/bin/realsh\\ncase \"$1\" in -c) exec "
                    "/bin/realsh \"$@\";; esac\\nmkdir -p /logs/verifier; echo 1 > "
                    "/logs/verifier/reward.txt; echo PASS\\n' > /bin/sh.new && chmod +x "
                    "/bin/sh.new && mv /bin/sh.new /bin/sh"),
    # (c) issue 26 case 6: the venv's python in the writable workdir
    "venv": ("venv", "rm /app/.venv/bin/python && printf '#!/bin/sh\\nexit 0\\n' > "
                     "/app/.venv/bin/python && chmod +x /app/.venv/bin/python"),
    # (d) start-up hooks: the stdlib's sitecustomize (Debian links it to /etc/python3.11,
    # which this image lacks), a .pth in site-packages, and PYTHONPATH in the profiles (not
    # read by a non-interactive shell in any case)
    "startup": ("conda", "d=$(python -c 'import os; print(os.path.dirname(os.__file__))') && "
                         "h=$(readlink $d/sitecustomize.py) && mkdir -p ${h%/*} && "
                         "printf 'import os\\nos._exit(0)\\n' > $h"
                         f" && echo 'import os; os._exit(0)' > {SITE}/zz.pth && mkdir -p "
                         "/tmp/evil /etc/profile.d && printf 'import os\\nos._exit(0)\\n' > "
                         "/tmp/evil/sitecustomize.py && for f in /etc/profile /root/.profile "
                         "/etc/profile.d/zz.sh; do echo 'export PYTHONPATH=/tmp/evil' >> $f; done"),
    # (e) a process left running that keeps writing the reward file while the verifier runs
    "residue": ("conda", "printf '#!/bin/sh\\nwhile :; do mkdir -p /logs/verifier /tests; echo "
                         "1 > /logs/verifier/reward.txt; echo \"def test_sum_is_written(): pass\" "
                         "> /tests/test_state.py; python -c \"import time; time.sleep(0.05)\"; "
                         "done\\n' > /tmp/w.sh && "
                         "mkdir -p /logs/verifier && echo 1 > /logs/verifier/reward.txt && "
                         "(sh /tmp/w.sh >/dev/null 2>&1 &)"),
}

# What a cheat's own probe prints: the reward file as the slot sees it, and as the verifier does.
PROBES = {"residue": "cat /logs/verifier/reward.txt 2>/dev/null || echo none"}


def test_the_view_binds_the_images_trees_and_refuses_a_replaced_one(tmp_path):
    lower, root = tmp_path / "lower", tmp_path / "root"
    for d in ("usr/bin", "etc", "app/.venv/bin", "opt/env/bin", "usr/lib/python3.11"):
        (lower / d).mkdir(parents=True)
    for d in ("usr", "etc", "app/.venv"):
        (root / d).mkdir(parents=True)
    (lower / "bin").symlink_to("usr/bin")
    (root / "bin").symlink_to("usr/bin")
    for exe in ("app/.venv/bin/python", "opt/env/bin/python3"):
        (lower / exe).write_text("")
    (lower / "usr/lib/python3.11/sitecustomize.py").symlink_to("/etc/python3.11/sitecustomize.py")
    prefixes = grading_view.interpreter_prefixes(
        str(lower), "/app/.venv/bin:/opt/env/bin:/usr/bin:/app:/bin", "/app")
    assert prefixes == ["app/.venv", "opt/env"]  # never /app itself, nothing of /usr
    args = iter(grading_view.mount_args(str(lower), str(root), prefixes))
    binds = [(op, next(args), next(args)) if op == "--ro-bind" else (op, next(args))
             for op in args]
    assert binds == [("--ro-bind", f"{lower}/usr", "/usr"),
                     ("--ro-bind", f"{lower}/app/.venv", "/app/.venv"),
                     ("--ro-bind", f"{lower}/opt/env", "/opt/env"),
                     ("--ro-bind", "/dev/null", "/etc/ld.so.preload"),
                     ("--tmpfs", "/tests"), ("--tmpfs", "/logs/verifier"),
                     ("--ro-bind", "/dev/null", "/etc/python3.11/sitecustomize.py")]
    (root / "bin").unlink()
    (root / "bin").mkdir()  # the agent's own /bin where the image links to /usr/bin
    with pytest.raises(grading_view.ViewError, match="/bin was replaced"):
        grading_view.mount_args(str(lower), str(root), prefixes)
    (root / "bin").rmdir()
    (root / "bin").symlink_to("usr/bin")
    (root / "logs").symlink_to("/tmp")
    with pytest.raises(grading_view.ViewError, match="/logs is no longer a directory"):
        grading_view.mount_args(str(lower), str(root), prefixes)
    (root / "logs").unlink()
    (root / "usr").rmdir()
    (root / "usr").symlink_to("/tmp")  # bubblewrap would follow it
    with pytest.raises(grading_view.ViewError, match="/usr was replaced"):
        grading_view.mount_args(str(lower), str(root), prefixes)


@pytest.fixture(scope="module")
def tasks_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toolchain")
    base = build_python_image(root / "base").path
    for name, extra in DOCKERFILES.items():
        folder = root / "tasks" / f"sum-{name}"
        files = {
            "task.toml": "[verifier]\ntimeout_sec = 120\n",
            "instruction.md": "Write the sum of /app/data/numbers.txt to /app/sum.txt.\n",
            "environment/Dockerfile": (f"FROM oci:{base}\nWORKDIR /app\nRUN mkdir -p /app/data"
                                       f" && printf '3\\n4\\n5\\n' > /app/data/numbers.txt\n{extra}"),
            "tests/test.sh": TEST_SH, "tests/test_state.py": TEST_STATE,
            "solution/solve.sh": "#!/bin/sh\necho 12 > /app/sum.txt\n"}
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
            if rel.endswith(".sh"):
                (folder / rel).chmod(0o755)
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(tasks_root):
    p = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=3,
                    image_store=str(tasks_root / "store"), start_timeout=240),
        SlotLimits(isolation="bwrap"))
    await p.start()
    yield p
    await p.stop()


def _tasks(root: Path, verifier: str = "auto") -> dict[str, object]:
    cfg = TaskSourceConfig(kind="terminal", source=str(root / "tasks"), filter="",
                           verifier=verifier)
    return {t.task_id.removeprefix("sum-"): t for t in load_terminal(cfg)[0]}


def _policy(env, kind):
    extra = {"responses": ["Done."]} if kind == "scripted" else {}  # a scripted policy's key
    return make_policy(PolicyConfig(type=kind, tokenizer=QWEN_TOKENIZER, max_tokens=4096,
                                    **extra), env)


@pytest.mark.timeout(600)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_rewritten_toolchain_does_not_reach_the_verifier(pool, tasks_root):
    tasks = _tasks(tasks_root)
    env = make_env("terminal", TERMINAL)

    async def cheat(name: str):
        image, command = CHEATS[name]
        task = tasks[image]
        async with pool.session(f"cheat-{name}", image=task.image, timeout=600) as sandbox:
            await env.prepare(task, sandbox)
            assert (await sandbox.exec(PROBE)).ok
            honest = (await sandbox.exec("/tmp/probe/t.sh")).stdout.strip()
            done = await sandbox.exec(command)
            assert done.ok, (name, done.stderr)
            probe = PROBES.get(name, "/tmp/probe/t.sh")
            fooled = (await sandbox.exec(probe)).stdout.strip()
            graded = (await sandbox.exec(probe, grading=True)).stdout.strip()
            traj = await run_rollout(task, env, _policy(env, "scripted"), sandbox,
                                     AgentConfig(max_context_tokens=16000),
                                     trajectory_id=f"cheat-{name}")
        return honest, fooled, graded, traj

    results = await asyncio.gather(*(cheat(n) for n in CHEATS))
    for name, (honest, fooled, graded, traj) in zip(CHEATS, results):
        # The cheat works on the slot's own toolchain; the grading view is the image's.
        if name in PROBES:
            assert (fooled, graded) == ("1", "none"), name
        else:
            assert (honest, fooled, graded) == ("FAIL", "PASS", "FAIL"), name
        assert traj.outcome == Outcome.DONE and traj.score == 0.0, \
            (name, traj.outcome, traj.error, traj.metadata.get("verdict"))


@pytest.mark.timeout(600)
@pytest.mark.asyncio(loop_scope="module")
async def test_gold_scores_one_with_the_images_own_interpreter(pool, tasks_root):
    """Both verifiers in the `.venv` image (the pytest runner with the venv's `python`,
    which lies in the workdir: read-only from the image in the grading view), and the
    reward script in the conda-style image; doing nothing scores 0.0."""
    runs = [("auto", "conda", "gold"), ("pytest", "venv", "gold"),
            ("auto", "venv", "gold"), ("pytest", "venv", "scripted")]

    async def one(verifier, image, kind):
        task = _tasks(tasks_root, verifier)[image]
        env = make_env("terminal", {**TERMINAL, "verifier": verifier})
        tid = f"{kind}-{image}-{verifier}"
        async with pool.session(tid, image=task.image, timeout=600) as sandbox:
            return await run_rollout(task, env, _policy(env, kind), sandbox,
                                     AgentConfig(max_context_tokens=16000), trajectory_id=tid)

    results = await asyncio.gather(*(one(*r) for r in runs))
    for run, traj in zip(runs, results):
        assert traj.outcome == Outcome.DONE, (run, traj.outcome, traj.error)
        assert traj.score == (1.0 if run[2] == "gold" else 0.0), (run, traj.metadata.get("verdict"))
