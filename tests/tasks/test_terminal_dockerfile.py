"""A terminal task whose environment is a Dockerfile, run as a user runs it: `launch.py
conf=terminal tasks.source=DIR` on a local Ray, the slot servers building the image from the
Dockerfile (FROM a real OCI image built from this machine's files; ARG, two stages with COPY
--from, ENV, WORKDIR, COPY, RUN with a heredoc, a CMD the slot starts)
with their image store, the agent working in the built image, the hidden test grading the
final state in the same slot. Gold (its script run through the persistent terminal) scores
1.0, a no-op 0.0, and the second run takes the build from the store's cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.actors.helpers import groups_jsonl
from tests.launch_config import qwen_tokenizer_dir
from tests.sandbox_image.images.python_image import ENV, build_python_image
from tests.test_launch import launch

TASK = "count-notes"

DOCKERFILE = """\
ARG PYENV={env}
FROM oci:{base} AS seed
RUN mkdir -p /seed && printf 'seeded\\n' > /seed/seed.txt

FROM oci:{base}
ARG PYENV
ENV PATH=/${{PYENV}}/bin:/usr/local/bin:/usr/bin:/bin REPORT_NAME=report.txt
WORKDIR /home/user/work
COPY notes.txt /home/user/work/notes.txt
RUN mkdir -p out
COPY --from=seed /seed/seed.txt out/seed.txt
RUN cat <<'EOF' > /home/user/work/README
Count the notes.
EOF
CMD ["python3", "-c", "import time; time.sleep(10 ** 6)"]
"""

TEST = """\
from pathlib import Path

WORK = Path("/home/user/work")


def test_the_report_counts_the_notes():
    assert (WORK / "out" / "report.txt").read_text().strip() == "3"


def test_what_the_image_built_is_still_there():
    assert (WORK / "out" / "seed.txt").read_text() == "seeded\\n"
    assert (WORK / "notes.txt").read_text().count("\\n") == 3
"""

# Run by gold as one script (`sh .gold.sh`), through the persistent terminal's session
# script in the gold run (agent.persistent_shell=true): the override reaches the tools.
SOLUTION = 'cd out\nwc -l < ../notes.txt | tr -d " " > "$REPORT_NAME"\n'


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dockerfile-task")
    base = build_python_image(root / "base")
    folder = root / "tasks" / TASK
    (folder / "environment").mkdir(parents=True)
    (folder / "tests").mkdir()
    (folder / "environment" / "Dockerfile").write_text(DOCKERFILE.format(base=base.path, env=ENV))
    (folder / "environment" / "notes.txt").write_text("one\ntwo\nthree\n")
    (folder / "instruction.md").write_text(
        "Count the lines of notes.txt and write the number into out/, in the file named by "
        "the REPORT_NAME environment variable.\n")
    (folder / "tests" / "test_final_state.py").write_text(TEST)
    (folder / "solution.sh").write_text(SOLUTION)
    return root


def run_launch(tasks_dir: Path, run_dir: Path, *overrides: str) -> str:
    proc = launch(f"tasks.source={tasks_dir / 'tasks'}",
                  f"backend.image_store={tasks_dir / 'store'}",
                  f"policy.tokenizer={qwen_tokenizer_dir()}", "env.group_size=2", "workers.num=1",
                  "backend.slots_per_host=2", *overrides, run_dir=run_dir, conf="terminal")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def builds(tasks_dir: Path) -> list[str]:
    found = tasks_dir / "store" / "builds" / "images"
    return sorted(p.name for p in found.iterdir() if p.is_dir()) if found.is_dir() else []


def test_gold_scores_one_in_the_built_image_and_no_op_zero_from_the_cache(tasks_dir, tmp_path):
    out = run_launch(tasks_dir, tmp_path / "gold", "policy=gold", "agent.persistent_shell=true")
    [group] = groups_jsonl(tmp_path / "gold")
    assert group["task_id"] == TASK, out[-3000:]
    assert group["scores"] == [1.0, 1.0], json.dumps(group["_meta"])[-3000:]
    assert "1 completed" in out
    built = builds(tasks_dir)
    assert len(built) == 1, built  # one build, shared by both slots of the group

    out = run_launch(tasks_dir, tmp_path / "noop", "policy=scripted",
                     "policy.responses=[Nothing to do.]")
    [group] = groups_jsonl(tmp_path / "noop")
    assert group["scores"] == [0.0, 0.0], json.dumps(group["_meta"])[-3000:]
    assert builds(tasks_dir) == built  # the second run's servers took it from the cache
