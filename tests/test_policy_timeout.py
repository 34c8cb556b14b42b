"""A policy server too slow to answer is an infrastructure outcome, never a 0.0 sent.

The real `launch.py` in a subprocess (its own local Ray, real slot servers, the real task
queue, worker and sink), pointed at a policy stand-in: the OpenAI-compatible fake of
tests/policy/fake_servers.py, which stalls past `agent.llm_timeout` on every request.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from rollout.leases import read_state
from rollout.policy.template import load_tokenizer
from tests.launch_config import qwen_tokenizer_dir
from tests.policy.fake_servers import FakeModelServer
from tests.test_first_hour import run_launch

pytestmark = pytest.mark.timeout(600)


class ThreadedFakeServer:
    """A FakeModelServer on its own event loop in a thread, for a launch in a subprocess."""

    def __init__(self, server: FakeModelServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def __enter__(self) -> str:
        self.thread.start()
        return self._call(self.server.start())

    def __exit__(self, *exc: object) -> None:
        self._call(self.server.stop())  # releases the stalled requests
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def test_policy_calls_past_llm_timeout_are_retried_then_dropped_never_scored(tmp_path: Path):
    tokenizer = qwen_tokenizer_dir()
    fake = FakeModelServer(load_tokenizer(tokenizer))
    fake.delay = 300.0  # stalls far past the timeout below (stop() releases it)
    run_dir = tmp_path / "run"
    with ThreadedFakeServer(fake) as url:
        proc = run_launch(
            "policy=openai_completions", f"policy.base_url={url}", "policy.model=fake",
            f"policy.tokenizer={tokenizer}", "agent.llm_timeout=2", "env.group_size=2",
            "workers.num=1", "run.max_groups=1", "queue.max_attempts=2",
            "backend.slots_per_host=2", run_dir=run_dir, timeout=500)
        requests = fake.requests
    out = proc.stdout
    assert proc.returncode == 1, (out[-3000:], proc.stderr[-3000:])
    # The calls really went out and really timed out: 2 attempts x 2 trajectories.
    assert requests == 4, requests
    # Nothing reached the trainer: no group, so no 0.0.
    assert (run_dir / "groups.jsonl").read_text().strip() == ""
    # The task was retried, then dropped with the reason.
    state = read_state(run_dir / "queue_state.json")
    (reason,) = state["dropped"].values()
    assert reason.startswith("policy_error: policy timeout") and "llm_timeout" in reason, reason
    assert "after 2 attempts" in reason
    assert state["infra_dropped"] == list(state["dropped"])
    # Every trajectory is recorded as the infrastructure outcome it was, its group as retried,
    # and none was graded (its group was going to be retried whatever the score).
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {line["attempt"] for line in lines} == {1, 2}
    for line in lines:
        assert line["outcome"] == "policy_error" and line["error"].startswith("policy timeout")
        assert line["group"].startswith("retry: policy_error: policy timeout")
        assert not [e for e in line["ev"] if e[0] in ("verify", "send")], line["ev"]
    # The summary says it in words.
    summary = (run_dir / "summary.txt").read_text()
    assert "1 dropped (1 for infrastructure failures)" in summary
    assert "no answer within agent.llm_timeout" in summary
    assert "groups: 0 delivered" in summary


def test_trajectories_in_flight_bounds_what_runs_at_once(tmp_path: Path):
    """workers.trajectories_in_flight=1: a group's two trajectories run one after the other
    (the second waits before its slot and its budget), and the group is still delivered."""
    from tests.test_launch import GOLD

    run_dir = tmp_path / "run"
    proc = run_launch(*GOLD, "workers.num=1", "workers.trajectories_in_flight=1",
                      "run.max_groups=1", run_dir=run_dir, timeout=500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    (group,) = [json.loads(line) for line in (run_dir / "groups.jsonl").read_text().splitlines()]
    assert group["scores"] == [1.0, 1.0]
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    spans = sorted((line["t0"], line["t0"] + max(e[1] + e[2] for e in line["ev"]
                                                  if e[0] != "send"), line.get("queued", 0))
                   for line in lines)
    (start_a, end_a, queued_a), (start_b, _, queued_b) = spans
    assert start_b >= end_a - 0.01, spans  # the second began once the first was done
    assert queued_b > 0 and queued_b >= queued_a, spans
