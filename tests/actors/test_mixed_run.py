"""A mixed run on a real local Ray: SWE-smith, terminal and math_repl tasks from weighted
sources on the same slot pools, the gold policy, every group delivered at 1.0, the kinds in
their configured proportions (within one group), per-kind stats in the summary and the run
report, and every kind's trajectories replay to their recorded scores."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from actors.progress import ProgressView
from rollout.record.events import read_events
from rollout.replay import Replayer
from rollout.record.run_record import RunRecord
from rollout.report.data import collect
from tests.actors.helpers import gold_config, groups_jsonl, make_cluster, run_until_done

WEIGHTS = {"swe_smith": 2, "terminal": 1, "math_repl": 1}
GROUPS = 8


async def test_mixed_sources_deliver_every_kind_in_proportion(ray_local, tmp_path: Path):
    sources = ",".join(f"{{kind:{k},weight:{w},max_items:6}}" for k, w in WEIGHTS.items())
    cfg = gold_config(tmp_path, f"tasks.sources=[{sources}]", f"run.max_groups={GROUPS}",
                      "env.group_size=1")
    dumped = cfg.model_dump(mode="json")  # what launch.py writes (replay reads it)
    dumped.pop("extra")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(dumped))
    cluster = make_cluster(cfg)
    assert {t.kind for t in cluster.tasks} == set(WEIGHTS)
    snap = await run_until_done(cluster)
    kind_of = {t.task_id: t.kind for t in cluster.tasks}
    groups = groups_jsonl(tmp_path)
    assert len(groups) == GROUPS and snap.queue["completed"] == GROUPS
    assert all(g["scores"] == [1.0] for g in groups), [g["_meta"] for g in groups]
    counts = Counter(kind_of[g["task_id"]] for g in groups)
    total = sum(WEIGHTS.values())
    for kind, weight in WEIGHTS.items():
        assert abs(counts[kind] - GROUPS * weight / total) <= 1, counts
    summary = ProgressView(cfg, enabled=False).summary(snap, RunRecord.read(tmp_path))
    for kind in WEIGHTS:
        assert f"kind {kind}: {counts[kind]} group(s) delivered" in summary, summary
    assert all(p["slots_in_use"] == 0 for p in snap.pools)
    # The run's events and report know each trajectory's kind.
    lines = list(read_events(tmp_path))
    assert Counter(line["kind"] for line in lines) == counts
    report = collect(tmp_path)["kinds"]
    assert {k: v["trajectories"] for k, v in report.items()} == dict(counts)
    assert all(v["mean_score"] == 1.0 for v in report.values()), report
    # Replay re-runs each kind's own tools (a terminal, a python session, a submit).
    replayer = Replayer(tmp_path)
    results = await replayer.replay(replayer.lines)
    assert len(results) == GROUPS
    assert all(r.reproduced and r.replayed == 1.0 for r in results), [r.describe() for r in results]
