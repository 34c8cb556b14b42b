from pathlib import Path

from rollout.trainer.outbox import Outbox
from rollout.trainer.rules import drop_reason, should_pause


def group(n: int = 2, length: int = 3, scores: list[float] | None = None) -> dict:
    return {
        "tokens": [[1] * length for _ in range(n)],
        "masks": [[-100] * length for _ in range(n)],
        "inference_logprobs": [[1.0] * length for _ in range(n)],
        "scores": scores if scores is not None else [float(i) for i in range(n)],
    }


def test_reopened_outbox_lists_unacked_in_order(tmp_path: Path):
    ob = Outbox(tmp_path / "outbox.jsonl")
    s0 = ob.append("a", group())
    s1 = ob.append("b", group())
    s2 = ob.append("c", group())
    ob.mark_delivered([s1])
    ob.close()
    again = Outbox(tmp_path / "outbox.jsonl")
    assert [(s, t) for s, t, _ in again.pending()] == [(s0, "a"), (s2, "c")]
    assert again.has_task("b") and not again.has_task("d")
    assert again.append("d", group()) == s2 + 1  # sequence numbers never repeat


def test_torn_last_line_is_ignored(tmp_path: Path):
    ob = Outbox(tmp_path / "outbox.jsonl")
    ob.append("a", group())
    ob.close()
    with (tmp_path / "outbox.jsonl").open("a") as fh:
        fh.write('{"seq": 7, "task_id": "b", "gro')
    again = Outbox(tmp_path / "outbox.jsonl")
    assert [t for _, t, _ in again.pending()] == ["a"]


def test_drop_rules():
    rules = dict(group_size=2, max_token_len=10, ensure_scores_are_not_same=True)
    assert drop_reason(group(), **rules) is None
    assert drop_reason(group(n=3), **rules) == "wrong_group_size"
    assert drop_reason(group(scores=[1.0, 1.0]), **rules) == "all_scores_equal"
    assert drop_reason(group(length=10), **rules) == "too_long"
    assert drop_reason(group(scores=[1.0, 1.0]), **dict(rules, ensure_scores_are_not_same=False)) is None
    bad = group()
    bad["masks"][1] = bad["masks"][1][:-1]
    assert drop_reason(bad, **rules) == "misaligned_masks"


def test_pacing_rule():
    assert not should_pause(queue_size=5, group_size=4, batch_size=8, max_batches_offpolicy=3)
    assert should_pause(queue_size=6, group_size=4, batch_size=8, max_batches_offpolicy=3)


def test_meta_is_kept_locally_but_never_sent():
    from rollout.trainer.sink import META_KEY, _strip

    g = dict(group(), **{META_KEY: [{"score": 1.0}]})
    assert META_KEY not in _strip(g) and _strip(g)["scores"] == g["scores"]
