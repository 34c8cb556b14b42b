"""The README's main job as a user runs it (`python launch.py`, the embedded default): its own
file, so the suite's workers run it beside the other launch tests rather than after them."""

from __future__ import annotations

from pathlib import Path

from tests.actors.helpers import assert_well_formed, groups_jsonl
from tests.launch_config import finish
from tests.test_launch import launch


def test_main_job_on_the_embedded_policy_writes_real_logprobs(tmp_path: Path):
    """The README's main job, kept small: real SmolLM2 on CPU, real slots, groups.jsonl."""
    run_dir = tmp_path / "run"
    proc = launch("run.max_groups=1", "env.group_size=2", "agent.max_turns=2",
                  "policy.max_tokens=24", run_dir=run_dir)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    (group,) = groups_jsonl(run_dir)
    assert_well_formed(group, 2)
    sampled = [lp for lps, ms in zip(group["inference_logprobs"], group["masks"])
               for lp, m in zip(lps, ms) if m != -100]
    assert sampled and all(lp <= 0.0 for lp in sampled)
    assert any(lp < 0.0 for lp in sampled)  # real logprobs, not placeholders
    assert group["group_overrides"]["inference_logprobs_available"] is True
    assert "1 completed" in out
    # The server was timed at start, and the bound on trajectories in flight follows from it.
    (timed,) = [line for line in out.splitlines() if "tokens/s alone" in line]
    assert " in flight a " in timed and "llm_timeout" in timed
    assert any("embedded policy: " in line and ("no bound" in line or "instead of" in line)
               for line in out.splitlines())
