"""The tool-call experiment (tests/bench/bench_embedded_toolcalls.py) in its smoke mode: it
measures what the embedded policy really sends, and counts with the agent's own parser."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from rollout.policy import PolicyConfig, make_policy
from rollout.policy.embedded import checkpoint_dir

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_embedded_toolcalls.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_embedded_toolcalls", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_bench_prompt_is_the_embedded_policys_prompt(checkpoint: Path) -> None:
    bench = _bench()
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf/policy/embedded.yaml").read_text())
    assert shipped["tool_prompt"] == "smollm2"
    cfg = PolicyConfig(type="scripted", tokenizer=str(checkpoint_dir()), tool_prompt="smollm2")
    renderer = make_policy(cfg).renderer
    for messages, tools in bench.first_turns(2):
        policy_text = renderer.render(messages, tools, add_generation_prompt=True)
        bench_text = renderer._apply(bench.PROMPTS["smollm2"](messages, tools), None, True)
        assert policy_text == bench_text
        assert "<tools>[" in policy_text and '"name": "terminal"' in policy_text


async def test_smoke_run_counts_first_turns(checkpoint: Path) -> None:
    bench = _bench()
    variants = [bench.Variant.parse("hermes@1.0"), bench.Variant.parse("smollm2@0.7")]
    results = await bench.run(variants, n=2, max_tokens=6, num_tasks=2, batch=2)
    assert [r.variant for r in results] == ["hermes@1", "smollm2@0.7"]
    for r in results:
        assert r.n == 2 and 0 <= r.well_formed <= r.attempted <= 2
        assert 2 <= r.tokens <= 12 and r.example  # every sample produced text
