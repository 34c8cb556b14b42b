"""`ScoredGroup`: the trajectories of one task, and their Atropos `ScoredDataGroup` form;
also what the run records of them (groups.jsonl summaries, events.jsonl lines).

Conventions (atroposlib 0.4.0 `envs.base.ScoredDataGroup`): tokens/masks/inference_logprobs
are per sequence and of equal length; masks are -100 where not trained; inference_logprobs
are 1.0 at masked positions. Messages, when asked for, are role+content strings only.

Trajectories whose policy gave no logprobs (openai_chat, gold, scripted) are flagged in
`overrides[i]["inference_logprobs_available"]` and, if any is missing, in
`group_overrides["inference_logprobs_available"]` so a trainer can skip importance ratios.
Infrastructure failures (sandbox_error, policy_error, grading_error) get `set_advantage_to_zero`: the model
should not be pushed away from what it did because a host died.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rollout.types import INFRA_OUTCOMES, Outcome, Task, TokenRecord, Trajectory

_INFRA_FAILURES = INFRA_OUTCOMES


@dataclass
class ScoredGroup:
    task: Task
    trajectories: list[Trajectory]
    generation_params: dict[str, Any] = field(default_factory=dict)
    group_overrides: dict[str, Any] = field(default_factory=dict)
    # Each trajectory's event trace (rollout/record/trace.py; None where not recorded): this
    # process's record of how it ran, never part of the Atropos form or `to_dict`.
    traces: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def scores(self) -> list[float]:
        return [float(t.score) for t in self.trajectories]

    @property
    def retry_reason(self) -> str | None:
        """Why the group must be retried, not scored: its first trajectory that ended in an
        infrastructure outcome (`task_error` for a task whose gold solution cannot run as
        given), or None when every trajectory was really graded."""
        bad = [t for t in self.trajectories if t.outcome in _INFRA_FAILURES]
        if not bad:
            return None
        kind = "task_error" if "task error:" in (bad[0].error or "") else bad[0].outcome.value
        return f"{kind}: {bad[0].error}"

    def to_atropos(self, include_messages: bool = False) -> dict[str, Any]:
        """A `ScoredDataGroup`-shaped dict, ready for `/scored_data_list`."""
        tokens, masks, logprobs, overrides, messages = [], [], [], [], []
        for t in self.trajectories:
            rec = t.record
            if not (len(rec.tokens) == len(rec.masks) == len(rec.logprobs)):
                raise ValueError(
                    f"trajectory {t.trajectory_id}: tokens/masks/logprobs lengths differ "
                    f"({len(rec.tokens)}/{len(rec.masks)}/{len(rec.logprobs)})"
                )
            tokens.append(list(rec.tokens))
            masks.append(list(rec.masks))
            logprobs.append([1.0 if m == -100 else float(lp) for m, lp in zip(rec.masks, rec.logprobs)])
            overrides.append({
                "trajectory_id": t.trajectory_id,
                "outcome": t.outcome.value,
                "inference_logprobs_available": rec.logprobs_available,
                "set_advantage_to_zero": t.outcome in _INFRA_FAILURES,
            })
            if include_messages:
                messages.append([
                    {"role": str(m.get("role", "")), "content": _content_text(m.get("content"))}
                    for m in rec.messages
                ])
        group_overrides = {"task_id": self.task.task_id, **self.group_overrides}
        group_overrides["inference_logprobs_available"] = all(
            t.record.logprobs_available for t in self.trajectories
        )
        return {
            "tokens": tokens,
            "masks": masks,
            "scores": self.scores,
            "advantages": None,
            "ref_logprobs": None,
            "messages": messages if include_messages else None,
            "generation_params": dict(self.generation_params) or None,
            "inference_logprobs": logprobs,
            "group_overrides": group_overrides,
            "overrides": overrides,
            "images": None,
        }

    def summaries(self) -> list[dict[str, Any]]:
        """What a user wants to see per trajectory in groups.jsonl (not sent to the trainer)."""
        return [trajectory_summary(t) for t in self.trajectories]

    def note_sent(self, sent: float, result: str) -> None:
        """The sink's answer, as each trajectory's `send` event (sent at monotonic `sent`)."""
        for trace in self.traces:
            if trace is not None:
                trace.add("send", sent, result=result)

    def event_lines(self, fate: str) -> list[dict[str, Any]]:
        """The trajectory lines for the run's events.jsonl (`fate`: how the group ended)."""
        return [trace.to_line(**trajectory_result(t), group=fate)
                for trace, t in zip(self.traces, self.trajectories) if trace is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "trajectories": [trajectory_to_dict(t) for t in self.trajectories],
            "generation_params": self.generation_params,
            "group_overrides": self.group_overrides,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoredGroup:
        return cls(
            task=Task.from_dict(d["task"]),
            trajectories=[trajectory_from_dict(t) for t in d["trajectories"]],
            generation_params=dict(d.get("generation_params") or {}),
            group_overrides=dict(d.get("group_overrides") or {}),
        )


def trajectory_result(t: Trajectory) -> dict[str, Any]:
    """What a trajectory's event line says about how it ended."""
    return {"outcome": t.outcome.value, "score": t.score, "error": t.error, "turns": t.turns,
            "tokens": len(t.record.tokens), "policy": t.metadata.get("policy"),
            "grading_error": t.metadata.get("grading_error")}


def trajectory_summary(t: Trajectory) -> dict[str, Any]:
    verdict = t.metadata.get("verdict") or {}
    return {
        "trajectory_id": t.trajectory_id, "outcome": t.outcome.value, "score": t.score,
        "turns": t.turns, "tokens": len(t.record.tokens), "llm_time": round(t.llm_time, 3),
        "tool_time": round(t.tool_time, 3), "error": t.error,
        "grading": verdict.get("reason"), "timings": t.metadata.get("timings"),
        "suspected_hacking": verdict.get("suspected_hacking") or None,
    }


def trajectory_to_dict(t: Trajectory) -> dict[str, Any]:
    d = dataclasses.asdict(t)
    d["outcome"] = t.outcome.value
    return d


def trajectory_from_dict(d: dict[str, Any]) -> Trajectory:
    d = dict(d)
    d["outcome"] = Outcome(d["outcome"])
    d["record"] = TokenRecord(**d["record"])
    return Trajectory(**d)


def _content_text(content: Any) -> str:
    """Message content as a string (OpenAI content parts are joined by their text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)
