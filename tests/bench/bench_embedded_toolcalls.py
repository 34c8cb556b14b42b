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
decoding), parsed by rollout/toolcalls.py with the task's tool names. "well-formed" counts
samples with at least one call the agent would run; "attempted" also counts calls the parser
rejects (bad JSON, unknown tool). Samples cycle over the first --tasks tasks; seeds are fixed,
so a rerun on the same machine reproduces the counts.

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

from rollout.agent import AgentConfig  # noqa: E402
from rollout.policy.embedded import load_model  # noqa: E402
from rollout.policy.embedded.engine import BatchedEngine  # noqa: E402
from rollout.policy.embedded.sampling import SamplingParams  # noqa: E402
from rollout.policy.template import TOOL_PROMPTS, ChatRenderer, _with_system_block  # noqa: E402
from rollout.tasks import load_tasks, make_env  # noqa: E402
from rollout.tasks.base import tool_names  # noqa: E402
from rollout.toolcalls import parse_tool_calls  # noqa: E402
from rollout.tools import describe_tools  # noqa: E402

Messages = list[dict[str, Any]]


def _smollm2_no_example(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """`smollm2` without its worked example (does the example matter?)."""
    out = TOOL_PROMPTS["smollm2"](messages, tools)
    system = out[0]["content"]
    start = system.index("For example:\n")
    end = system.index("\n", start + len("For example:\n")) + 1
    out[0]["content"] = system[:start] + system[end:]
    return out


def _smollm2_tools_first(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """`smollm2` with the tools block before the task's own system prompt (as in the tuning
    data, where the tools block is the whole system message)."""
    block = TOOL_PROMPTS["smollm2"]([], tools)[0]["content"]
    rest = [dict(m) for m in messages]
    if rest and rest[0].get("role") == "system":
        rest[0]["content"] = f"{block}\n\n{rest[0]['content']}"
        return rest
    return _with_system_block(rest, block)


STRICT = ("Answer with tool calls only, in the format above and with no other text, until "
          "the work is done.")


def _strict(fn: Callable[[Messages, list[dict[str, Any]]], Messages]):
    """`fn`, then a line asking for calls and nothing else (as the tuning data's prompt does)."""
    def wrapped(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
        out = fn(messages, tools)
        out[0]["content"] += "\n" + STRICT
        return out
    return wrapped


def _fewshot(fn: Callable[[Messages, list[dict[str, Any]]], Messages]):
    """`fn`, then one worked exchange as real chat turns before the task's user message: a
    question, the assistant's call, the tool's answer, the assistant's closing reply."""
    def wrapped(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
        out = fn(messages, tools)
        at = 1 if out and out[0].get("role") == "system" else 0
        example = [
            {"role": "user", "content": "Which files are in the working directory?"},
            {"role": "assistant",
             "content": '<tool_call>[{"name": "terminal", "arguments": {"command": "ls"}}]</tool_call>'},
            {"role": "tool", "content": "README.md\nsrc\ntests"},
            {"role": "assistant", "content": "It holds README.md, src and tests."},
        ]
        return out[:at] + example + out[at:]
    return wrapped


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"role": "assistant",
            "content": f'<tool_call>[{json.dumps({"name": name, "arguments": args})}]</tool_call>'}


EXAMPLE_TURNS: Messages = [
    {"role": "user", "content": "Which files are in the working directory?"},
    _call("terminal", command="ls"),
    {"role": "tool", "content": "README.md\nsrc\ntests"},
    {"role": "user", "content": "Show me the README."},
    _call("read_file", path="README.md"),
    {"role": "tool", "content": "# demo\nA small library."},
]


def _fewshot2(fn: Callable[[Messages, list[dict[str, Any]]], Messages]):
    """`fn`, then two worked exchanges where every assistant turn is a call."""
    def wrapped(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
        out = fn(messages, tools)
        at = 1 if out and out[0].get("role") == "system" else 0
        return out[:at] + [dict(m) for m in EXAMPLE_TURNS] + out[at:]
    return wrapped


ISSUE_TURNS: Messages = [
    {"role": "user", "content": "<issue>\n`add(2, 3)` returns -1 instead of 5.\n</issue>\n\n"
                                "Fix this issue by editing the library code."},
    _call("terminal", command="grep -rn 'def add' ."),
    {"role": "tool", "content": "./calc.py:1:def add(a, b):"},
    _call("read_file", path="calc.py"),
    {"role": "tool", "content": "def add(a, b):\n    return a - b\n"},
    _call("write_file", path="calc.py", content="def add(a, b):\n    return a + b\n"),
    {"role": "tool", "content": "wrote 32 bytes to calc.py"},
    {"role": "assistant", "content": "Fixed: `add` subtracted; it now adds."},
]


def _fewshot_issue(fn: Callable[[Messages, list[dict[str, Any]]], Messages]):
    """`fn`, then one worked bug fix in the task's own shape: every step a call, a summary last."""
    def wrapped(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
        out = fn(messages, tools)
        at = 1 if out and out[0].get("role") == "system" else 0
        return out[:at] + [dict(m) for m in ISSUE_TURNS] + out[at:]
    return wrapped


def _compact(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
    """One line per tool (name, arguments, description) instead of JSON schemas, the list
    call format and its example."""
    lines = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters", {})
        required = set(params.get("required", []))
        args = ", ".join(k if k in required else f"{k}?" for k in params.get("properties", {}))
        lines.append(f"- {fn['name']}({args}): {fn.get('description', '')}")
    block = ("Tools:\n" + "\n".join(lines) + "\nTo call tools, answer with a JSON list inside "
             "<tool_call></tool_call>, for example:\n"
             '<tool_call>[{"name": "terminal", "arguments": {"command": "ls"}}]</tool_call>')
    return _with_system_block(messages, block)


REMINDER = ("\n\nStart with a tool call, for example:\n"
            '<tool_call>[{"name": "terminal", "arguments": {"command": "ls"}}]</tool_call>')


def _remind(fn: Callable[[Messages, list[dict[str, Any]]], Messages]):
    """`fn`, then the call format once more at the end of the first user message (the last
    thing the model reads before its first turn)."""
    def wrapped(messages: Messages, tools: list[dict[str, Any]]) -> Messages:
        out = fn(messages, tools)
        for m in out:
            if m.get("role") == "user":
                m["content"] = f"{m['content']}{REMINDER}"
                break
        return out
    return wrapped


PROMPTS: dict[str, Callable[[Messages, list[dict[str, Any]]], Messages]] = {
    **TOOL_PROMPTS,
    "smollm2-noexample": _smollm2_no_example,
    "smollm2-first": _smollm2_tools_first,
    "smollm2-strict": _strict(TOOL_PROMPTS["smollm2"]),
    "smollm2-first-strict": _strict(_smollm2_tools_first),
    "smollm2-fewshot": _fewshot(TOOL_PROMPTS["smollm2"]),
    "smollm2-first-fewshot": _fewshot(_smollm2_tools_first),
    "hermes-fewshot": _fewshot(TOOL_PROMPTS["hermes"]),
    "smollm2-fewshot2": _fewshot2(TOOL_PROMPTS["smollm2"]),
    "compact": _compact,
    "compact-fewshot2": _fewshot2(_compact),
    "smollm2-fewshot-issue": _fewshot_issue(TOOL_PROMPTS["smollm2"]),
    "smollm2-remind": _remind(TOOL_PROMPTS["smollm2"]),
    "compact-remind": _remind(_compact),
}
DEFAULT_VARIANTS = ["hermes@1.0", "hermes@0.7", "smollm2-noexample@1.0", "smollm2@1.0",
                    "smollm2@0.7", "smollm2-first@0.7"]


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
              batch: int = 8, seed: int = 0) -> list[Result]:
    loaded = load_model()
    renderer = ChatRenderer(loaded.tokenizer)
    turns = first_turns(num_tasks)
    engine = BatchedEngine(loaded, max_batch_size=batch)
    await engine.start()
    try:
        return [await run_variant(engine, renderer, v, turns, n, max_tokens, seed) for v in variants]
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
    ap.add_argument("--run-dir", type=Path,
                    help="instead: the share of a finished run's trajectories with a tool call")
    args = ap.parse_args(argv)
    if args.run_dir:
        total, well, attempted = run_dir_share(args.run_dir)
        print(f"{args.run_dir}: {well}/{total} trajectories with >= 1 well-formed tool call, "
              f"{attempted}/{total} with >= 1 attempted")
        return []
    variants = [Variant.parse(v) for v in args.variants]
    results = asyncio.run(run(variants, n=args.n, max_tokens=args.max_tokens,
                              num_tasks=args.tasks, batch=args.batch, seed=args.seed))
    print(f"{'variant':<26} {'well-formed':>12} {'attempted':>10} {'tok/s':>7}")
    for r in results:
        print(f"{r.variant:<26} {r.well_formed:>4}/{r.n:<3} {r.share:>4.0%} "
              f"{r.attempted:>6}/{r.n:<3} {r.tokens / r.seconds:>7.1f}")
        if args.show:
            print("    " + r.example[:400].replace("\n", "\n    "))
        if args.json:
            print(json.dumps({**dataclasses.asdict(r), "share": r.share}))
    return results


if __name__ == "__main__":
    main()
