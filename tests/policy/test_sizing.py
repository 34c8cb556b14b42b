"""The embedded server's sizing: how many trajectories in flight a measured speed allows."""

from __future__ import annotations

import pytest

from rollout.settings.config import WorkersConfig
from rollout.policy.embedded.sizing import (TURN_SHARE, Throughput, needs_full_batch,
                                            sized_workers, trajectory_limit)


def test_step_time_interpolates_between_alone_and_a_full_batch():
    tp = Throughput(batch=8, step_alone=0.1, step_full=0.8)
    assert tp.step(1) == 0.1 and tp.step(8) == pytest.approx(0.8)
    assert tp.step(4) == pytest.approx(0.1 + 0.7 * 3 / 7)
    assert tp.step(20) == pytest.approx(0.8)  # past a batch, steps are full ones
    assert tp.tokens_per_s == pytest.approx(10.0) and tp.batch_tokens_per_s == pytest.approx(10.0)


def test_more_than_a_batch_waits_in_waves():
    tp = Throughput(batch=4, step_alone=0.1, step_full=0.2)
    assert tp.turn_seconds(4, 100) == pytest.approx(20.0)
    assert tp.turn_seconds(5, 100) == pytest.approx(40.0)  # the fifth waits for a whole turn
    assert tp.turn_seconds(8, 100) == pytest.approx(40.0)
    assert tp.turn_seconds(9, 100) == pytest.approx(60.0)


def test_limit_is_the_most_whose_turns_fit_the_share_of_the_timeout():
    tp = Throughput(batch=4, step_alone=0.1, step_full=0.2)
    # budget 0.25 x 300 = 75 s: a full batch's turn is 20 s, so three waves (60 s) fit, four do not
    limit = trajectory_limit(tp, max_tokens=100, llm_timeout=300)
    assert limit == 12
    assert tp.turn_seconds(limit, 100) <= TURN_SHARE * 300 < tp.turn_seconds(limit + 1, 100)
    # a shorter timeout allows fewer; within one batch the slower steps decide
    # steps: 0.1 s alone, 0.133 with 2, 0.167 with 3, 0.2 with 4; turns of 100 tokens x that
    assert trajectory_limit(tp, max_tokens=100, llm_timeout=80) == 4  # 20 s: one full batch
    assert trajectory_limit(tp, max_tokens=100, llm_timeout=60) == 2  # 15 s: 13.3 fits, 16.7 not
    assert trajectory_limit(tp, max_tokens=100, llm_timeout=48) == 1  # 12 s: only alone


def test_a_turn_that_does_not_fit_alone_gets_one_and_skips_the_batch_measurement():
    # the 2-core machine: ~1.5 tokens/s alone; a 256-token turn is ~170 s
    alone = Throughput(batch=8, step_alone=1 / 1.5, step_full=None)
    assert trajectory_limit(alone, max_tokens=256, llm_timeout=300) == 1
    assert not needs_full_batch(alone, max_tokens=256, llm_timeout=300)
    fast = Throughput(batch=8, step_alone=0.02, step_full=None)
    assert needs_full_batch(fast, max_tokens=256, llm_timeout=300)
    # a server that decodes one sequence at a time: each trajectory's turn waits for the others'
    assert trajectory_limit(Throughput(batch=1, step_alone=0.02, step_full=None),
                            max_tokens=256, llm_timeout=300) == 14


def test_sized_workers_bounds_lowers_num_keeps_an_explicit_setting():
    w = WorkersConfig.load({"num": 2, "groups_in_flight": 2}, "workers")
    out, what = sized_workers(w, group_size=4, limit=5)  # 16 would run: bounded to 5
    assert out.trajectories_in_flight == 5 and out.num == 2 and out.per_worker_trajectories() == 2
    assert "instead of 16" in what
    out, what = sized_workers(w, group_size=4, limit=1)
    assert (out.num, out.trajectories_in_flight) == (1, 1) and "workers.num 2 -> 1" in what
    out, what = sized_workers(w, group_size=4, limit=16)
    assert out is w and "no bound" in what
    explicit = w.replace(trajectories_in_flight=8)
    out, what = sized_workers(explicit, group_size=4, limit=1)
    assert out is explicit and "kept" in what


def test_a_bound_below_the_worker_count_is_refused():
    from rollout.config_model import ConfigError

    with pytest.raises(ConfigError, match="below workers.num=2"):
        WorkersConfig.load({"num": 2, "trajectories_in_flight": 1}, "workers")
    assert WorkersConfig.load({"num": 2, "trajectories_in_flight": 5},
                              "workers").per_worker_trajectories() == 2
