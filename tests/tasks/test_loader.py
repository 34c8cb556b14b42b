"""Loader over JSONL/JSON/parquet in the real SWE-smith schema, including malformed rows."""

from __future__ import annotations

import json
import logging

import pytest

from rollout.tasks import TaskSourceConfig, load_tasks, load_tasks_with_report, row_to_task
from rollout.tasks.loader import RowError, repo_name

PATCH = "diff --git a/pkg/m.py b/pkg/m.py\n--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"


def good_row(i: int, **over) -> dict:
    row = {
        "instance_id": f"owner__proj.abcd1234.func_pm_op_change__{i:08x}",
        "repo": "swesmith/owner__proj.abcd1234",
        "patch": PATCH,
        "FAIL_TO_PASS": json.dumps([f"tests/test_m.py::test_f{i}"]),  # JSON string, as on the hub
        "PASS_TO_PASS": [f"tests/test_m.py::test_p{i}", "tests/test_n.py::TestX::test_y[a b]"],
        "created_at": "2025-01-01T00:00:00",
        "image_name": "swebench/swesmith.x86_64.owner_1776_proj.abcd1234",
        "problem_statement": f"Thing {i} is broken.",
    }
    row.update(over)
    return row


def write_jsonl(path, rows) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


@pytest.fixture
def jsonl(tmp_path):
    rows = [good_row(i) for i in range(6)]
    rows[1]["repo"] = "owner__proj.abcd1234"  # no swesmith/ prefix
    rows[2]["FAIL_TO_PASS"] = ["tests/test_m.py::test_f2"]  # a real list
    bad = [
        "{not json",
        json.dumps([1, 2]),                                    # not an object
        good_row(10, instance_id=None),
        good_row(11, FAIL_TO_PASS="[broken json"),
        good_row(12, FAIL_TO_PASS="[]"),
        good_row(13, PASS_TO_PASS=[1, 2]),
        good_row(14, patch="just words"),
        good_row(15, problem_statement="   "),
        {k: v for k, v in good_row(16).items() if k != "PASS_TO_PASS"},
        good_row(0),                                           # duplicate of row 0
        good_row(17, FAIL_TO_PASS=json.dumps(["src/lib.rs::tests::it_works"]),
                 PASS_TO_PASS=["src/lib.rs::tests::other"]),   # not python
    ]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows[:3] + bad[:6] + rows[3:] + bad[6:])
    return path


def test_jsonl_with_malformed_rows_loads_good_ones_and_counts_the_rest(jsonl, caplog):
    with caplog.at_level(logging.WARNING, logger="rollout.tasks.loader"):
        tasks, report = load_tasks_with_report(TaskSourceConfig(source=str(jsonl)))
    assert [t.task_id for t in tasks] == [good_row(i)["instance_id"] for i in range(6)]
    assert report.loaded == 6
    assert report.skipped == {
        "invalid JSON": 1, "row is not an object": 1, "missing instance_id": 1,
        "FAIL_TO_PASS is not valid JSON": 1, "FAIL_TO_PASS is empty": 1,
        "PASS_TO_PASS is not a list of test ids": 1, "patch is not a unified diff": 1,
        "missing problem_statement": 1, "missing PASS_TO_PASS": 1,
        "duplicate instance_id": 1, "filtered: not python": 1,
    }
    assert "skipped 11 rows" in caplog.text
    # Every message names the row by its line in the file, as an editor shows it.
    assert f"{jsonl}:4: skipped row" in caplog.text  # line 4: the first bad line
    assert f"{jsonl}:6: skipped row (?): missing instance_id" in caplog.text
    assert f"{jsonl}:16: skipped row ({good_row(0)['instance_id']}): duplicate" in caplog.text


def test_json_and_parquet_rows_are_numbered_from_one(tmp_path, caplog):
    rows = [good_row(0), good_row(1, patch="just words")]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    with caplog.at_level(logging.WARNING, logger="rollout.tasks.loader"):
        load_tasks(TaskSourceConfig(source=str(tmp_path / "rows.json")))
    assert f"{tmp_path / 'rows.json'} row 2: skipped row" in caplog.text


def test_normalized_fields(jsonl):
    tasks = load_tasks(TaskSourceConfig(source=str(jsonl)))
    t0, t1, t2 = tasks[:3]
    assert t0.kind == "swe_smith" and t0.instruction == "Thing 0 is broken."
    assert t0.image == "swebench/swesmith.x86_64.owner_1776_proj.abcd1234"
    assert t0.data["FAIL_TO_PASS"] == ["tests/test_m.py::test_f0"]
    assert t0.data["PASS_TO_PASS"][1] == "tests/test_n.py::TestX::test_y[a b]"
    assert t0.data["repo_name"] == t1.data["repo_name"] == "owner__proj.abcd1234"
    assert t2.data["FAIL_TO_PASS"] == ["tests/test_m.py::test_f2"]
    assert t0.data["patch"] == PATCH and t0.data["base_commit"] is None


def test_filter_off_keeps_non_python(jsonl):
    _, report = load_tasks_with_report(TaskSourceConfig(source=str(jsonl), filter=""))
    assert report.loaded == 7


def test_shuffle_is_seeded_and_max_items_caps(jsonl):
    a = load_tasks(TaskSourceConfig(source=str(jsonl), shuffle=True, seed=7))
    b = load_tasks(TaskSourceConfig(source=str(jsonl), shuffle=True, seed=7))
    c = load_tasks(TaskSourceConfig(source=str(jsonl), shuffle=True, seed=8, max_items=3))
    assert [t.task_id for t in a] == [t.task_id for t in b]
    assert sorted(t.task_id for t in a) == sorted(good_row(i)["instance_id"] for i in range(6))
    assert len(c) == 3


def test_train_eval_split_is_a_stable_partition(tmp_path):
    path = tmp_path / "many.jsonl"
    write_jsonl(path, [good_row(i) for i in range(200)])
    train = {t.task_id for t in load_tasks(TaskSourceConfig(source=str(path), eval_fraction=0.25))}
    evals = {t.task_id for t in load_tasks(
        TaskSourceConfig(source=str(path), split="eval", eval_fraction=0.25))}
    assert not train & evals and len(train | evals) == 200
    assert 20 < len(evals) < 80


def test_parquet_and_json_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [good_row(i) for i in range(3)]
    for r in rows:  # parquet from the hub stores the lists as JSON strings
        r["PASS_TO_PASS"] = json.dumps(r["PASS_TO_PASS"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    for name in ("rows.parquet", "rows.json"):
        tasks = load_tasks(TaskSourceConfig(source=str(tmp_path / name)))
        assert [t.data["PASS_TO_PASS"][0] for t in tasks] == [f"tests/test_m.py::test_p{i}" for i in range(3)]


def test_missing_file_and_hf_without_datasets_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tasks(TaskSourceConfig(source=str(tmp_path / "nope.jsonl")))
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    with pytest.raises(RuntimeError, match="pip install datasets"):
        load_tasks(TaskSourceConfig(source="SWE-bench/SWE-smith"))


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key tasks.sorce; valid keys: source, split"):
        TaskSourceConfig.from_mapping({"sorce": "bundled"})
    assert TaskSourceConfig.from_mapping({"max_items": 2}).max_items == 2


def test_bundled_source_has_at_least_40_valid_instances_over_6_repos():
    tasks, report = load_tasks_with_report(TaskSourceConfig())
    assert report.total_skipped == 0 and len(tasks) >= 40
    assert len({t.data["repo"] for t in tasks}) >= 6
    for t in tasks:
        assert t.data["FAIL_TO_PASS"] and t.data["PASS_TO_PASS"]
        assert t.image == "rollout-bundled:py311"
        assert not set(t.data["FAIL_TO_PASS"]) & set(t.data["PASS_TO_PASS"])


def test_row_helpers():
    assert repo_name("swesmith/a__b.123") == "a__b.123" and repo_name("a__b.123") == "a__b.123"
    with pytest.raises(RowError, match="missing repo"):
        row_to_task(good_row(0, repo=""))


def test_make_env_builds_swe_smith_and_rejects_unknown_kinds(tmp_path):
    from rollout.tasks import make_env
    from rollout.tasks.swe_smith import SweSmithEnv

    env = make_env("swe_smith", {"cache_dir": str(tmp_path), "test_timeout": 30})
    assert isinstance(env, SweSmithEnv) and env.cfg.test_timeout == 30
    with pytest.raises(ValueError, match="unknown task kind 'webshop'"):
        make_env("webshop", {})
