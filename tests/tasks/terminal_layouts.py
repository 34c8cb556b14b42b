"""Terminal tasks of our own in each published layout, written into a directory for tests:
Harbor (`task.toml`, `tests/test.sh` writing a reward file, `solution/`), Endless Terminals
(Harbor's layout, `tests/test.sh` running a parametrized `tests/test_final_state.py`),
Terminal-Bench 1 (`task.yaml`, `run-tests.sh`, `tests/test_outputs.py`, `solution.sh`), the
bundled form, a Harbor task whose reward is a fraction, and folders that cannot load.

Every task's Dockerfile is the same text without COPY, so the slot servers build one image
for all of them (the build cache key is the Dockerfile, its base and its COPY sources).

    write_layouts(root / "tasks", base_layout)   # base_layout: an OCI layout with python+pytest
"""

from __future__ import annotations

from pathlib import Path

from tests.sandbox_image.images.python_image import ENV

# task id -> (gold score, no-op score)
EXPECTED = {"harbor-sum": (1.0, 0.0), "et-params": (1.0, 0.0), "tb1-count": (1.0, 0.0),
            "bundled-words": (1.0, 0.0), "harbor-partial": (0.5, 0.0)}
# folder -> the skip reason the loader gives it (a substring)
BROKEN = {"broken-toml": "task.toml is not valid TOML",
          "no-dockerfile": "missing environment/Dockerfile",
          "bad-dockerfile": "ONBUILD is not supported",
          "notes": "not a task folder"}

DOCKERFILE = f"""\
FROM oci:{{base}}
ENV PATH=/{ENV}/bin:/usr/local/bin:/usr/bin:/bin
WORKDIR /app
RUN mkdir -p /app/data && printf '3\\n4\\n5\\n' > /app/data/numbers.txt
"""

# Scripts use sh: the test image has no bash (real tasks' `#!/bin/bash` run as written).
HARBOR_TEST_SH = """\
#!/bin/sh
# Harbor's contract: write the reward. A 2 s nap: the task's own verifier timeout (280 s in
# task.toml) covers it where a 1 s tasks.test_timeout would not.
python -c "import time; time.sleep(2)"
cd /app
if python -m pytest -q -p no:cacheprovider /tests/test_state.py; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"""

HARBOR_TEST_STATE = """\
from pathlib import Path


def test_sum_is_written():
    assert Path("/app/sum.txt").read_text().strip() == "12"
"""

HARBOR_SOLVE = """\
#!/bin/sh
python /solution/add.py /app/data/numbers.txt > /app/sum.txt
"""

HARBOR_ADD = """\
import sys

print(sum(int(line) for line in open(sys.argv[1]) if line.strip()))
"""

ET_TEST_SH = """\
#!/bin/sh
python -m pytest -q -p no:cacheprovider /tests/test_final_state.py -rA
if [ $? -eq 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
"""

ET_TEST = """\
from pathlib import Path

import pytest


@pytest.mark.parametrize("name,content", [("a.txt", "alpha"), ("b.txt", "beta")])
def test_file_holds_its_word(name, content):
    assert (Path("/app/out") / name).read_text().strip() == content


class TestListing:
    @pytest.mark.parametrize("name", ["a.txt", "b.txt"])
    def test_listed(self, name):
        assert name in Path("/app/out/index.txt").read_text().split()
"""

ET_SOLVE = """\
#!/bin/sh
mkdir -p /app/out
echo alpha > /app/out/a.txt
echo beta > /app/out/b.txt
ls /app/out | grep -v index > /app/out/index.txt
"""

TB1_YAML = """\
instruction: |-
  Count the lines of /app/data/numbers.txt and write the count to /app/count.txt.
author_email: tests@example.invalid
difficulty: easy
category: file-operations
tags: [files]
parser_name: pytest
max_agent_timeout_sec: 240
max_test_timeout_sec: 90
run_tests_in_same_shell: false
"""

TB1_RUN_TESTS = """\
#!/bin/sh
cd /app
python -m pytest -p no:cacheprovider $TEST_DIR/test_outputs.py -rA
"""

TB1_TEST = """\
from pathlib import Path

import pytest


def test_count_file_exists():
    assert Path("/app/count.txt").exists()


@pytest.mark.parametrize("expected", [3])
def test_count_is_right(expected):
    assert int(Path("/app/count.txt").read_text()) == expected
"""

TB1_SOLUTION = """\
#!/bin/sh
wc -l < /app/data/numbers.txt | tr -d ' ' > /app/count.txt
"""

BUNDLED_TEST = """\
from pathlib import Path


def test_words_are_counted():
    assert Path("/app/words.txt").read_text().split() == ["3"]
"""

PARTIAL_TEST_SH = """\
#!/bin/sh
# Partial credit: the share of the four parts that exist.
n=0
for part in one two three four; do [ -f /app/parts/$part ] && n=$((n + 1)); done
python -c "print($n / 4)" > /logs/verifier/reward.txt
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.endswith(".sh"):
            path.chmod(0o755)


def write_layouts(root: Path, base: Path) -> Path:
    """Every task of EXPECTED and every folder of BROKEN under `root`; returns `root`."""
    dockerfile = DOCKERFILE.format(base=base)
    _write(root / "harbor-sum", {
        "task.toml": ('version = "1.0"\n\n[metadata]\ndifficulty = "easy"\n\n'
                      "[verifier]\ntimeout_sec = 280.0\n\n[agent]\ntimeout_sec = 300.0\n\n"
                      "[environment]\nbuild_timeout_sec = 600.0\ncpus = 1\nmemory_mb = 1024\n"
                      "storage_mb = 1024\n"),
        "instruction.md": "Write the sum of the numbers in /app/data/numbers.txt to /app/sum.txt.\n",
        "environment/Dockerfile": dockerfile,
        "tests/test.sh": HARBOR_TEST_SH, "tests/test_state.py": HARBOR_TEST_STATE,
        "solution/solve.sh": HARBOR_SOLVE, "solution/add.py": HARBOR_ADD})
    _write(root / "et-params", {
        "task.toml": 'version = "0.1"\n\n[metadata]\ncategory = "file_operations"\n',
        "instruction.md": ("Create /app/out/a.txt holding alpha, /app/out/b.txt holding beta, "
                           "and /app/out/index.txt listing both file names.\n"),
        "environment/Dockerfile": dockerfile,
        "tests/test.sh": ET_TEST_SH, "tests/test_final_state.py": ET_TEST,
        "solution/solve.sh": ET_SOLVE})
    _write(root / "tb1-count", {
        "task.yaml": TB1_YAML, "Dockerfile": dockerfile,
        "docker-compose.yaml": "services:\n  client:\n    build: .\n",
        "run-tests.sh": TB1_RUN_TESTS, "tests/test_outputs.py": TB1_TEST,
        "solution.sh": TB1_SOLUTION})
    _write(root / "bundled-words", {
        "instruction.md": "Write the number of lines of /app/data/numbers.txt to /app/words.txt.\n",
        "environment/Dockerfile": dockerfile,
        "tests/test_final_state.py": BUNDLED_TEST,
        "solution.sh": "wc -l < /app/data/numbers.txt | tr -d ' ' > /app/words.txt\n"})
    _write(root / "harbor-partial", {
        "task.toml": "[verifier]\ntimeout_sec = 60\n",
        "instruction.md": "Create the files one, two, three and four in /app/parts.\n",
        "environment/Dockerfile": dockerfile,
        "tests/test.sh": PARTIAL_TEST_SH,
        # The gold solution does half of the work: its reward is 0.5 by design.
        "solution/solve.sh": "#!/bin/sh\nmkdir -p /app/parts && touch /app/parts/one /app/parts/two\n"})
    _write(root / "broken-toml", {
        "task.toml": "[verifier\ntimeout_sec = 1\n", "instruction.md": "x\n",
        "environment/Dockerfile": dockerfile, "tests/test.sh": "#!/bin/sh\n"})
    _write(root / "no-dockerfile", {
        "task.toml": "[agent]\ntimeout_sec = 10\n", "instruction.md": "x\n",
        "tests/test.sh": "#!/bin/sh\n"})
    _write(root / "bad-dockerfile", {
        "task.toml": "", "instruction.md": "x\n",
        "environment/Dockerfile": dockerfile + "ONBUILD RUN true\n", "tests/test.sh": "#!/bin/sh\n"})
    _write(root / "notes", {"README.md": "Not a task.\n"})
    return root
