"""The embedded-policy throughput benchmark (tests/bench/bench_embedded.py) at smoke sizes,
against the suite's shared server: it runs end to end and prints its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rollout.policy.embedded import EmbeddedServerProcess

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_embedded.py"


async def test_bench_embedded_smoke(checkpoint: Path, server: EmbeddedServerProcess,
                                    capsys) -> None:
    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("bench_embedded", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompts = bench.chat_prompts(AutoTokenizer.from_pretrained(str(checkpoint)))
    await bench.run(server.base_url, server.proc.pid, prompts[:2], tokens=1, rounds=1, history=8)
    out = capsys.readouterr().out
    assert "tok/cpu-s" in out and "next turn over a 8-token history" in out, out
