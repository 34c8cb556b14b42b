"""A stand-in trainer for the Atropos API: see batches flow without a real trainer.

    python -m rollout.trainer.consume --url http://127.0.0.1:8000 [--batch-size 8]
        [--max-token-len 32768] [--out batches.jsonl] [--batches N]

It speaks the trainer's side of atroposlib's `run-api` (shared/notes/atropos-protocol.md):
`POST /register` (batch size and max token length), then `GET /batch` every `--poll`
seconds. Its first `/batch` marks the trainer started, which is what a run with
`trainer=atropos` waits for. Each batch is printed (one line per batch, one per group: task,
scores, tokens and trained tokens per sequence, outcomes); `--out` appends each group as one
JSON line, `{"batch": n, "group": <the group as the API served it>}`. It stops after
`--batches` batches, or at Ctrl-C.

Protocol traps it reports rather than hides: the first `/register` wins (a second trainer's
batch size is ignored; the one in force is printed), and a batch is only formed when whole
groups add up to exactly the batch size, so `--batch-size` must be a multiple of the run's
`env.group_size` or nothing ever arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import aiohttp

MASKED = -100  # the Atropos convention for a token that is not trained on


class ConsumerError(Exception):
    """A failure the user can fix (the API is not there, it refused the registration)."""


def describe_batch(n: int, batch: list[dict[str, Any]]) -> list[str]:
    """The printed lines for batch `n`: a header, then one line per group."""
    seqs = sum(len(g.get("tokens") or []) for g in batch)
    lines = [f"batch {n}: {len(batch)} group(s), {seqs} sequence(s)"]
    for g in batch:
        task = (g.get("group_overrides") or {}).get("task_id", "?")
        tokens = [len(t) for t in g.get("tokens") or []]
        trained = [sum(1 for m in ms if m != MASKED) for ms in g.get("masks") or []]
        outcomes = sorted({str(o.get("outcome")) for o in g.get("overrides") or []
                           if o.get("outcome") is not None})
        line = (f"  task {task}: scores {g.get('scores')}, tokens {tokens}, "
                f"trained tokens {trained}")
        if outcomes:
            line += f", outcomes {', '.join(outcomes)}"
        lines.append(line)
    return lines


class Consumer:
    """Registers as the trainer and pulls batches. One instance, one registration."""

    def __init__(self, url: str, *, batch_size: int, max_token_len: int,
                 poll: float = 0.5, request_timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.max_token_len = max_token_len
        self.poll = poll
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str,
                    **kw: Any) -> Any:
        try:
            async with http.request(method, self.url + path, **kw) as resp:
                if resp.status >= 400:
                    body = (await resp.text())[:300]
                    raise ConsumerError(f"{method} {self.url}{path}: HTTP {resp.status}: {body}")
                return await resp.json()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise ConsumerError(f"nothing answers at {self.url} ({type(e).__name__}); "
                                "start atroposlib's API first: run-api --host 127.0.0.1 "
                                "--port 8000") from e

    async def register(self, http: aiohttp.ClientSession, wait: float) -> dict[str, Any]:
        """POST /register, retrying a connection failure for up to `wait` seconds (the API
        may still be starting). Returns /info: the batch size and max token length in force."""
        payload = {"wandb_group": "rollout-consume", "wandb_project": "rollout-consume",
                   "batch_size": self.batch_size, "max_token_len": self.max_token_len,
                   "checkpoint_dir": "", "save_checkpoint_interval": 0,
                   "starting_step": 0, "num_steps": 1_000_000}
        deadline = time.monotonic() + wait
        while True:
            try:
                await self._call(http, "POST", "/register", json=payload)
                break
            except ConsumerError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(self.poll, 1.0))
        return await self._call(http, "GET", "/info")

    async def run(self, *, batches: int | None, wait: float,
                  on_batch: Callable[[int, list[dict[str, Any]]], None],
                  on_info: Callable[[dict[str, Any]], None] = lambda info: None) -> int:
        """Register, then pull until `batches` batches arrived (forever if None). Returns how
        many arrived. `on_batch(n, groups)` is called for each, in order of arrival."""
        got = 0
        async with aiohttp.ClientSession(timeout=self._timeout) as http:
            on_info(await self.register(http, wait))
            while batches is None or got < batches:
                reply = await self._call(http, "GET", "/batch")
                batch = reply.get("batch")
                if batch:
                    got += 1
                    on_batch(got, batch)
                else:
                    await asyncio.sleep(self.poll)
        return got


class BatchWriter:
    """Prints each batch and, with an `out` file, appends its groups as JSON lines (flushed
    per batch, so a file read while the consumer runs has whole batches)."""

    def __init__(self, stdout: TextIO, out: Path | None) -> None:
        self.stdout = stdout
        self.fh = out.open("a", encoding="utf-8") if out else None
        self.groups = 0
        self.registered = False

    def info(self, info: dict[str, Any], asked: int) -> None:
        self.registered = True
        size = info.get("batch_size")
        self.stdout.write(f"registered as the trainer: batch_size {size}, max_token_len "
                          f"{info.get('max_token_len')}; waiting for batches\n")
        if size != asked:
            self.stdout.write(f"note: another trainer registered first; batch_size {size} "
                              f"applies, not {asked}\n")
        self.stdout.flush()

    def batch(self, n: int, groups: list[dict[str, Any]]) -> None:
        if self.fh:
            for g in groups:
                self.fh.write(json.dumps({"batch": n, "group": g}, separators=(",", ":")) + "\n")
            self.fh.flush()
        self.groups += len(groups)
        self.stdout.write("\n".join(describe_batch(n, groups)) + "\n")
        self.stdout.flush()

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rollout.trainer.consume",
        description="Register with an Atropos API as the trainer and print (and optionally "
                    "write) the batches it serves.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the API (run-api)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="sequences per batch; a multiple of the run's env.group_size")
    p.add_argument("--max-token-len", type=int, default=32768,
                   help="the trainer's limit: the run drops sequences at or over it")
    p.add_argument("--batches", type=int, default=None, help="stop after N batches")
    p.add_argument("--out", type=Path, default=None,
                   help='append each group as a JSON line {"batch": n, "group": {...}}')
    p.add_argument("--poll", type=float, default=0.5, help="seconds between empty /batch calls")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for the API to answer at start")
    args = p.parse_args(argv)
    for name in ("batch_size", "max_token_len", "batches"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.poll <= 0 or args.wait < 0:
        p.error("--poll must be positive and --wait not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # exits 2 with argparse's usage line on a bad argument
    try:
        writer = BatchWriter(sys.stdout, args.out)
    except OSError as e:
        print(f"error: cannot open --out {args.out}: {e}", file=sys.stderr)
        return 2
    consumer = Consumer(args.url, batch_size=args.batch_size, max_token_len=args.max_token_len,
                        poll=args.poll)
    try:
        got = asyncio.run(consumer.run(batches=args.batches, wait=args.wait,
                                       on_batch=writer.batch,
                                       on_info=lambda info: writer.info(info, args.batch_size)))
    except ConsumerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if writer.registered else 2  # 2: nothing to consume from at start
    except KeyboardInterrupt:
        got = None
    finally:
        writer.close()
    what = "stopped" if got is None else "done"
    print(f"{what}: {writer.groups} group(s) received"
          + (f", written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
