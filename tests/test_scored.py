import json

import pytest
from atroposlib.api.server import ScoredData
from atroposlib.envs.base import ScoredDataGroup

from rollout.scored import ScoredGroup
from rollout.types import Outcome, Task, TokenRecord, Trajectory

TASK = Task("inst-1", "swe_smith", "fix it", image="img", data={"repo": "r"})


def traj(tid, outcome, score, *, logprobs=True):
    rec = TokenRecord(
        tokens=[1, 2, 3, 4, 5],
        masks=[-100, -100, 3, 4, -100],
        logprobs=[1.0, 1.0, -0.5, -0.25, 1.0] if logprobs else [1.0, 1.0, 0.0, 0.0, 1.0],
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": None},
                  {"role": "tool", "content": [{"type": "text", "text": "out"}], "tool_call_id": "c"}],
        logprobs_available=logprobs,
    )
    return Trajectory(TASK.task_id, tid, outcome, rec, score=score, turns=1, metadata={"k": [1]})


def group():
    return ScoredGroup(TASK, [traj("a", Outcome.DONE, 1.0), traj("b", Outcome.SANDBOX_ERROR, 0.0, logprobs=False)],
                       generation_params={"temperature": 0.7})


def test_to_atropos_has_the_scored_data_group_fields_and_conventions():
    data = group().to_atropos(include_messages=True)
    assert set(ScoredDataGroup.__annotations__) - set(data) <= {"distill_token_ids", "distill_logprobs"}
    assert data["tokens"] == [[1, 2, 3, 4, 5]] * 2
    assert data["masks"][0] == [-100, -100, 3, 4, -100]
    assert data["inference_logprobs"][0] == [1.0, 1.0, -0.5, -0.25, 1.0]
    assert data["scores"] == [1.0, 0.0]
    assert data["messages"][0] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""},
                                   {"role": "tool", "content": "out"}]
    assert data["overrides"][0]["set_advantage_to_zero"] is False
    assert data["overrides"][1] == {"trajectory_id": "b", "outcome": "sandbox_error",
                                    "inference_logprobs_available": False, "set_advantage_to_zero": True}
    assert data["group_overrides"] == {"task_id": "inst-1", "inference_logprobs_available": False}
    assert data["generation_params"] == {"temperature": 0.7}
    ScoredData(**data)  # the Atropos API server's own model accepts it
    assert group().to_atropos(include_messages=False)["messages"] is None


def test_misaligned_record_is_refused():
    g = group()
    g.trajectories[0].record.masks.pop()
    with pytest.raises(ValueError, match="lengths differ"):
        g.to_atropos()


def test_json_round_trip_is_lossless():
    g = group()
    back = ScoredGroup.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g
    assert back.trajectories[1].outcome is Outcome.SANDBOX_ERROR
