"""Prometheus: the driver's /metrics scraped during a real gold run, the families there
with real values and names that pass Prometheus' naming rules; the seam's own guarantees."""

from __future__ import annotations

import logging
import re

from rollout.record.metrics import FAMILIES, LABEL_RE, NAME_RE, NoopMetrics, PrometheusRegistry, StatsMetrics
from rollout.protocols import Metrics
from rollout.record.stats import ClusterStats, GroupStats, TrajectoryStats, policy_error_kind
from tests.observe.conftest import GOLD_TASKS, GROUP_SIZE

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
PHASES = ("acquire_wait", "prepare", "llm_call", "tool_call", "grading", "trainer_send")


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(family name -> type, samples), checking the exposition format line by line."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types, line
            types[name] = kind
        elif line.startswith("# HELP "):
            assert line.split(" ", 3)[3].strip(), line
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(LABEL.findall(m.group(3) or ""))
            samples.append((m.group(1), labels, float(m.group(4))))
    return types, samples


def check_names(types: dict[str, str], samples: list) -> None:
    for name, kind in types.items():
        assert NAME_RE.match(name) and name == name.lower() and "__" not in name, name
        assert name.startswith("rollout_"), name
        assert name.endswith("_total") == (kind == "counter"), name  # counters and only they
        assert not re.search(r"_(ms|milliseconds|minutes|bytes_total)$", name), name  # base units
    for name, labels, _ in samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} has no # TYPE"
        for label in labels:
            assert LABEL_RE.match(label) and not label.startswith("__"), label


def values(samples, name: str, **labels: str) -> list[float]:
    return [v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())]


def test_metrics_scraped_during_a_gold_run(gold_run):
    assert gold_run.scrape and gold_run.scraped_at_completed < GOLD_TASKS  # mid-run
    types, samples = parse(gold_run.scrape)
    check_names(types, samples)
    for family in ("rollout_trajectories_total", "rollout_groups_total", "rollout_phase_seconds",
                   "rollout_trajectory_score", "rollout_trajectory_turns",
                   "rollout_trajectory_tokens", "rollout_tool_calls_total", "rollout_slots",
                   "rollout_hosts", "rollout_tasks", "rollout_trainer_paused",
                   "rollout_outbox_groups"):
        assert family in types, family
    assert types["rollout_phase_seconds"] == "histogram"
    assert values(samples, "rollout_trajectories_total", outcome="done")[0] >= GROUP_SIZE
    assert values(samples, "rollout_groups_total", result="delivered", reason="accepted")[0] >= 1
    for phase in PHASES:  # every phase of a trajectory was observed, with real time in it
        assert values(samples, "rollout_phase_seconds_count", phase=phase)[0] >= 1, phase
        assert values(samples, "rollout_phase_seconds_sum", phase=phase)[0] > 0, phase
    assert values(samples, "rollout_trajectory_score_sum")[0] >= GROUP_SIZE  # gold: all 1.0
    assert values(samples, "rollout_trajectory_tokens_sum")[0] > 0
    assert values(samples, "rollout_tool_calls_total", tool="terminal", status="ok")[0] >= 1
    # Slots count under the image they run now: the tasks' image has its slots there even
    # when they were moved from the default image's host (the local backend mixes images).
    image = "rollout-bundled:py311"
    busy = values(samples, "rollout_slots", image=image, state="busy")
    free = values(samples, "rollout_slots", image=image, state="free")
    assert len(busy) == len(free) == 1 and busy[0] + free[0] > 0, gold_run.scrape
    assert not values(samples, "rollout_slots", image="None")
    assert values(samples, "rollout_hosts", state="up")[0] >= 1
    assert values(samples, "rollout_tasks", state="completed")[0] >= 1


def test_the_registry_renders_valid_exposition_and_the_seam_never_raises(caplog):
    reg = PrometheusRegistry()

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("exporter down")

    m: Metrics = StatsMetrics(Broken(), reg)
    line = {"outcome": "policy_error", "score": 0.0, "turns": 1, "tokens": 10, "image": 'a"b',
            "error": "policy unreachable: connect refused",
            "ev": [["acquire", 0, 0.1, {"waited": 0.05}], ["turn", 0.1, 2.0, {}]]}
    with caplog.at_level(logging.WARNING):
        m.trajectory(TrajectoryStats.from_line(line))
        m.group(GroupStats.from_fate("retry: policy_error: unreachable"))
        m.cluster(ClusterStats(slots={'a"b': (1, 3)}, hosts={"up": 1}, trainer_queue=2))
    assert sum("skipped from now on" in r.message for r in caplog.records) == 1
    types, samples = parse(reg.render())
    check_names(types, samples)
    assert values(samples, "rollout_policy_errors_total", kind="unreachable") == [1.0]
    assert values(samples, "rollout_groups_total", result="retried", reason="policy_error") == [1.0]
    assert "rollout_trajectory_score_count" not in reg.render()  # not graded: no score
    assert values(samples, "rollout_slots", image='a\\"b', state="free") == [3.0]
    assert values(samples, "rollout_phase_seconds_bucket", phase="llm_call", le="+Inf") == [1.0]
    assert values(samples, "rollout_phase_seconds_bucket", phase="llm_call", le="1.0") == [0.0]
    assert all(NAME_RE.match(f) for f in FAMILIES)
    noop: Metrics = NoopMetrics()
    noop.trajectory(TrajectoryStats.from_line(line))
    assert policy_error_kind("LLM call exceeded the llm_timeout") == "timeout"
    assert GroupStats.from_fate("all_scores_equal") == GroupStats("dropped", "all_scores_equal")


def test_the_grafana_dashboard_and_scrape_config_name_real_families():
    import json
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "ray"
    dash = json.loads((conf / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"rollout_\w+", e)}
    assert used == set(FAMILIES), set(FAMILIES) ^ used  # every family shown, nothing made up
    scrape = yaml.safe_load((conf / "prometheus.yml").read_text())
    assert {j["job_name"] for j in scrape["scrape_configs"]} == {"rollout-driver", "ray"}


def test_worker_stats_add_up_without_changing_the_parts():
    from rollout.record.stats import WorkerStats

    a = WorkerStats(trajectories_done=1, traj_time=1.5, outcomes={"done": 1})
    b = WorkerStats(trajectories_done=2, traj_time=2.0, outcomes={"done": 1, "timeout": 1},
                    grading_errors={"timeout": 1})
    t = WorkerStats.total([a, b])
    assert t.trajectories_done == 3 and t.traj_time == 3.5
    assert t.outcomes == {"done": 2, "timeout": 1} and t.grading_errors == {"timeout": 1}
    assert a.outcomes == {"done": 1} and WorkerStats.total([]) == WorkerStats()
