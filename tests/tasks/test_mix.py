"""The task seam: weighted sources, their interleaving, the env picked by `Task.kind`."""

from __future__ import annotations

from collections import Counter

import pytest

from rollout.config_model import ConfigError
from rollout.tasks import load_tasks, make_env
from rollout.tasks.config import TaskSourceConfig
from rollout.tasks.math import MathEnv
from rollout.tasks.mix import TaskEnvs, interleave
from rollout.tasks.swe_smith import SweSmithEnv
from rollout.tasks.terminal import TerminalEnv


def test_interleave_keeps_proportions_in_every_prefix():
    out = interleave([(["a"] * 30, 3), (["b"] * 30, 1), (["c"] * 30, 2)])
    for n in range(6, 60, 6):
        c = Counter(out[:n])
        assert abs(c["a"] - n / 2) <= 1 and abs(c["b"] - n / 6) <= 1 and abs(c["c"] - n / 3) <= 1
    assert Counter(out) == {"a": 30, "b": 30, "c": 30}  # an exhausted source leaves the rest
    assert interleave([([1, 2], 1), ([], 5)]) == [1, 2]


def test_sources_override_the_section_per_kind():
    cfg = TaskSourceConfig(sources=[{"kind": "swe_smith", "weight": 3, "max_items": 3},
                                    {"kind": "math_repl", "max_items": 2, "filter": ""}])
    (swe, w1), (math, w2) = cfg.mixture()
    assert (swe.kind, swe.max_items, swe.filter, w1) == ("swe_smith", 3, "python", 3.0)
    assert (math.kind, math.max_items, w2) == ("math_repl", 2, 1.0)
    tasks = load_tasks(cfg)
    assert [t.kind for t in tasks] == ["swe_smith", "swe_smith", "math_repl", "swe_smith", "math_repl"]
    envs = TaskEnvs(cfg)
    assert isinstance(envs.for_task(tasks[0]), SweSmithEnv)
    assert isinstance(envs.for_task(tasks[2]), MathEnv) and envs.get("math_repl") is envs.get("math_repl")
    assert isinstance(envs.get("terminal"), TerminalEnv)  # a kind no source named still works
    gold = envs.reference_solution(tasks[2])
    assert [c.name for c in gold] == ["python", "submit"]


@pytest.mark.parametrize("entry, message", [
    ({"weight": 1}, "needs a kind"),
    ({"kind": "terminal", "weight": 0}, "weight must be a number > 0"),
    ({"kind": "terminal", "weight": True}, "weight must be a number > 0"),
    ({"kind": "terminal", "sorce": "x"}, "unknown key"),
])
def test_bad_source_entries_are_refused_with_the_key(entry, message):
    with pytest.raises(ConfigError, match=f"tasks.sources.*{message}"):
        TaskSourceConfig(sources=[entry])


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task kind 'webshop'"):
        load_tasks({"sources": [{"kind": "webshop"}]})
    assert isinstance(make_env("math", {"kind": "math"}), MathEnv)
