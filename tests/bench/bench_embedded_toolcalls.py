"""Experiment: how often the embedded model (SmolLM2-135M-Instruct) makes a well-formed tool
call on its first turn of a bundled SWE-smith task, per prompt variant and sampling setting.

Run on demand:

    python tests/bench/bench_embedded_toolcalls.py                    # the default variants
    python tests/bench/bench_embedded_toolcalls.py --n 32 --variants hermes@1.0 smollm2@0.7

A variant is `PROMPT@TEMPERATURE[/TOP_P]`. PROMPT is a `policy.tool_prompt` style of
rollout/policy/template.py (`hermes`, `smollm2`) or one of the experimental ones below. Each
sample is one trajectory's first turn: the task's messages and tools exactly as rollout.py
opens a conversation, rendered by the policy's ChatRenderer, sampled by the real model in
process (BatchedEngine, batched; the tokens are the model's own samples, no constrained
decoding), parsed by rollout/agent/toolcalls.py with the task's tool names. "well-formed" counts
samples with at least one call the agent would run; "attempted" also counts calls the parser
rejects (bad JSON, unknown tool). Samples cycle over the first --tasks tasks; seeds are fixed,
so a rerun on the same machine reproduces the counts.

`--run-dir runs/<time>` instead counts a finished run's trajectories with at least one
well-formed tool call (from its events.jsonl), e.g. after the README's main job.

`run(...)` is what tests/policy_embedded/test_bench_toolcalls.py calls in its smoke mode.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.agent.loop import AgentConfig  # noqa: E402
from rollout.policy.embedded import load_model  # noqa: E402
from rollout.policy.embedded.engine import BatchedEngine  # noqa: E402
from rollout.policy.embedded.sampling import SamplingParams  # noqa: E402
from rollout.policy.template import (  # noqa: E402
    TOOL_PROMPTS,
    ChatRenderer,
    _with_system_block,
    smollm2_tool_block,
)
from rollout.tasks import load_tasks, make_env  # noqa: E402
from rollout.agent.tools import tool_names  # noqa: E402
from rollout.agent.toolcalls import parse_tool_calls  # noqa: E402
from rollout.agent.tools import describe_tools  # noqa: E402

Messages = list[dict[str, Any]]


def _smollm2_system_only(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """`smollm2` without its worked example: the tools block in the system message only."""
    return _with_system_block(messages, smollm2_tool_block(tools))


def _smollm2_tools_first(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """The tools block alone, before the task's own system prompt (as in the APIGen data,
    where the tools block is the whole system message)."""
    block = smollm2_tool_block(tools)
    rest = [dict(m) for m in messages]
    if rest and rest[0].get("role") == "system":
        rest[0]["content"] = f"{block}\n\n{rest[0]['content']}"
        return rest
    return _with_system_block(rest, block)


QA_TURNS: Messages = [
    {"role": "user", "content": "Which files are in the working directory?"},
    {"role": "assistant", "content": '<tool_call>[{"name": "terminal", "arguments": '
                                     '{"command": "ls"}}]</tool_call>'},
    {"role": "tool", "content": "README.md\nsrc\ntests"},
    {"role": "user", "content": "Show me the README."},
    {"role": "assistant", "content": '<tool_call>[{"name": "read_file", "arguments": '
                                     '{"path": "README.md"}}]</tool_call>'},
    {"role": "tool", "content": "# demo\nA small library."},
]


def _smollm2_qa(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """The tools block, then two short questions each answered by a call (not a bug fix)."""
    out = _smollm2_system_only(messages, tools)
    return out[:1] + [dict(m) for m in QA_TURNS] + out[1:]


PROMPTS: dict[str, Callable[[Messages, list[dict[str, Any]]], Messages]] = {
    **TOOL_PROMPTS,
    "smollm2-system-only": _smollm2_system_only,
    "smollm2-first": _smollm2_tools_first,
    "smollm2-qa": _smollm2_qa,
}
DEFAULT_VARIANTS = ["hermes@1.0", "hermes@0.7", "smollm2-system-only@0.7", "smollm2-qa@0.7",
                    "smollm2@1.0", "smollm2@0.7", "smollm2@0.5"]


@dataclass
class Variant:
    prompt: str
    temperature: float
    top_p: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Variant:
        prompt, _, sampling = spec.partition("@")
        if prompt not in PROMPTS:
            raise SystemExit(f"unknown prompt {prompt!r} in {spec!r}; one of {sorted(PROMPTS)}")
        temp, _, top_p = (sampling or "1.0").partition("/")
        return cls(prompt, float(temp), float(top_p or 1.0))

    def __str__(self) -> str:
        top = f"/{self.top_p:g}" if self.top_p < 1.0 else ""
        return f"{self.prompt}@{self.temperature:g}{top}"


@dataclass
class Result:
    variant: str
    n: int
    well_formed: int  # samples with >= 1 call the agent would run
    attempted: int  # samples with >= 1 <tool_call> block, valid or not
    tokens: int
    seconds: float
    example: str  # the first sample with a well-formed call (or the first sample)

    @property
    def share(self) -> float:
        return self.well_formed / self.n if self.n else 0.0


def first_turns(num_tasks: int) -> list[tuple[Messages, list[dict[str, Any]]]]:
    """(messages, tool schemas) of the first bundled SWE-smith tasks, as rollout.py opens them."""
    tasks = load_tasks({"kind": "swe_smith", "source": "bundled"})[:num_tasks]
    env = make_env("swe_smith")
    limits = AgentConfig().tool_limits
    return [(env.messages(t), describe_tools(env.tools(t), limits)) for t in tasks]


async def run_variant(engine: BatchedEngine, renderer: ChatRenderer, variant: Variant,
                      turns: list[tuple[Messages, list[dict[str, Any]]]], n: int,
                      max_tokens: int, seed: int) -> Result:
    limits = AgentConfig().parse_limits
    prompts = []
    for i in range(n):
        messages, tools = turns[i % len(turns)]
        text = renderer._apply(PROMPTS[variant.prompt](messages, tools), None, True)
        prompts.append((renderer.encode(text), tool_names(tools)))

    async def one(i: int) -> tuple[str, int]:
        ids, _ = prompts[i]
        params = SamplingParams(max_tokens=max_tokens, temperature=variant.temperature,
                                top_p=variant.top_p, seed=seed + i,
                                stop_token_ids=sorted(renderer.stop_ids))
        out = await engine.generate(ids, params)
        return renderer.assistant_text(out.token_ids), len(out.token_ids)

    started = time.perf_counter()
    samples = await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - started
    well = attempted = 0
    example = samples[0][0] if samples else ""
    for i, (text, _) in enumerate(samples):
        parsed = parse_tool_calls(text, dataclasses.replace(limits, known_tools=prompts[i][1]))
        attempted += parsed.attempted
        if parsed.calls:
            if not well:
                example = text
            well += 1
    return Result(str(variant), n, well, attempted, sum(k for _, k in samples), seconds, example)


async def run(variants: list[Variant], *, n: int, max_tokens: int, num_tasks: int = 8,
              batch: int = 8, seed: int = 0,
              on_result: Callable[[Result], None] | None = None) -> list[Result]:
    loaded = load_model()
    renderer = ChatRenderer(loaded.tokenizer)
    turns = first_turns(num_tasks)
    engine = BatchedEngine(loaded, max_batch_size=batch)
    await engine.start()
    try:
        results = []
        for v in variants:
            results.append(await run_variant(engine, renderer, v, turns, n, max_tokens, seed))
            if on_result is not None:
                on_result(results[-1])
        return results
    finally:
        await engine.stop()


def run_dir_share(run_dir: Path) -> tuple[int, int, int]:
    """(trajectories, with >= 1 well-formed call, with >= 1 attempted call) of a finished
    run, from its events.jsonl: a `tool` event is a call the agent ran, one marked
    `parse_error` a call the parser refused."""
    total = well = attempted = 0
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "ev" not in record:
            continue
        tools = [e[3] for e in record["ev"] if e[0] == "tool"]
        total += 1
        attempted += bool(tools)
        well += any(not t.get("parse_error") for t in tools)
    return total, well, attempted


def main(argv: list[str] | None = None) -> list[Result]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--n", type=int, default=16, help="samples (first turns) per variant")
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--tasks", type=int, default=8, help="cycle over this many bundled tasks")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", action="store_true", help="print one sample per variant")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines")
    ap.add_argument("--smoke", action="store_true",
                    help="2 samples of 6 tokens per default variant: only proves it works")
    ap.add_argument("--run-dir", type=Path,
                    help="instead: the share of a finished run's trajectories with a tool call")
    args = ap.parse_args(argv)
    if args.run_dir:
        total, well, attempted = run_dir_share(args.run_dir)
        print(f"{args.run_dir}: {well}/{total} trajectories with >= 1 well-formed tool call, "
              f"{attempted}/{total} with >= 1 attempted")
        return []
    if args.smoke:
        args.n, args.max_tokens, args.tasks, args.batch = 2, 6, 2, 2
    variants = [Variant.parse(v) for v in args.variants]
    print(f"{'variant':<26} {'well-formed':>12} {'attempted':>10} {'tok/s':>7}", flush=True)

    def show(r: Result) -> None:
        print(f"{r.variant:<26} {r.well_formed:>4}/{r.n:<3} {r.share:>4.0%} "
              f"{r.attempted:>6}/{r.n:<3} {r.tokens / r.seconds:>7.1f}", flush=True)
        if args.show:
            print("    " + r.example[:400].replace("\n", "\n    "), flush=True)
        if args.json:
            print(json.dumps({**dataclasses.asdict(r), "share": r.share}), flush=True)

    return asyncio.run(run(variants, n=args.n, max_tokens=args.max_tokens, num_tasks=args.tasks,
                           batch=args.batch, seed=args.seed, on_result=show))


if __name__ == "__main__":
    main()
