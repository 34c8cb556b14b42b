"""GroupSink against the real atroposlib API server (`run-api`) and a test trainer."""

import asyncio
import logging
import time
from pathlib import Path

import pytest

from rollout.trainer.sink import GroupRules, GroupSink, TrainerConfig
from tests.atropos_server import AtroposAPI, TestTrainer
from tests.trainer.test_outbox import group


@pytest.fixture
def api(tmp_path: Path):
    server = AtroposAPI(log_dir=tmp_path)
    server.start()
    yield server
    server.stop()


async def until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def make_sink(run_dir: Path, url: str) -> GroupSink:
    cfg = TrainerConfig(type="atropos", url=url, status_interval=0.1, register_poll=0.1,
                        retry_backoff=0.05, max_retries=1, request_timeout=5)
    return GroupSink(run_dir, cfg, GroupRules(group_size=2, max_batches_offpolicy=1))


async def pull_until(trainer: TestTrainer, n_groups: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(trainer.groups()) < n_groups:
        assert time.monotonic() < deadline, f"trainer got {len(trainer.groups())}/{n_groups}"
        await asyncio.to_thread(trainer.pull)
        await asyncio.sleep(0.05)


async def test_waits_for_trainer_then_delivers_and_paces(api: AtroposAPI, tmp_path: Path):
    sink = make_sink(tmp_path, api.url)
    await sink.start()
    try:
        # Before the trainer starts: accepted durably, nothing sent, no new groups started.
        assert sink.submit("t0", group()) == "accepted"
        assert sink.submit("t0", group()) == "duplicate"
        assert sink.may_start() is False
        assert len(sink.outbox) == 1
        trainer = TestTrainer(api.url, batch_size=4)
        await asyncio.to_thread(trainer.start)
        await until(lambda: sink.registration is not None, what="registration")
        await until(lambda: len(sink.outbox) == 0, what="delivery")
        await until(sink.may_start, what="pacing to allow starts")
        # batch_size 4 sequences, max_batches_offpolicy 1: two queued groups fill it.
        assert sink.submit("t1", group()) == "accepted"
        await until(lambda: not sink.may_start(), what="pacing to pause")
        await pull_until(trainer, 2)
        await until(sink.may_start, what="pacing to resume after the trainer pulled")
        got = trainer.groups()
        assert [g["scores"] for g in got] == [[0.0, 1.0], [0.0, 1.0]]
        assert all(len(t) == len(m) for g in got for t, m in zip(g["tokens"], g["masks"]))
        assert sink.stats()["drops"] == {"duplicate": 1}
    finally:
        await sink.close(drain_timeout=1)
    lines = (tmp_path / "groups.jsonl").read_text().splitlines()
    assert len(lines) == 2


async def test_api_down_then_back_and_restart_resends(api: AtroposAPI, tmp_path: Path):
    trainer = TestTrainer(api.url, batch_size=2)
    await asyncio.to_thread(trainer.start)
    sink = make_sink(tmp_path, api.url)
    await sink.start()
    await until(lambda: sink.registration is not None, what="registration")
    api.stop()
    for i in range(3):
        assert sink.submit(f"t{i}", group()) == "accepted"
    await until(lambda: sink.api_up is False, what="the sink to notice the API is down")
    assert len(sink.outbox) == 3
    # Close with the API down: everything stays in the outbox for the next run.
    await sink.close(drain_timeout=0.2)
    api.start()  # a fresh API: it has forgotten the trainer and the env
    trainer = TestTrainer(api.url, batch_size=2)
    await asyncio.to_thread(trainer.start)
    again = make_sink(tmp_path, api.url)
    assert len(again.outbox) == 3
    await again.start()
    try:
        await until(lambda: len(again.outbox) == 0, what="resend after restart")
        await pull_until(trainer, 3)
        assert sorted(len(g["tokens"]) for g in trainer.groups()) == [2, 2, 2]
    finally:
        await again.close(drain_timeout=1)


async def test_api_restart_mid_run_reregisters(api: AtroposAPI, tmp_path: Path):
    trainer = TestTrainer(api.url, batch_size=2)
    await asyncio.to_thread(trainer.start)
    sink = make_sink(tmp_path, api.url)
    await sink.start()
    try:
        await until(lambda: sink.registration is not None, what="registration")
        api.restart()
        trainer = TestTrainer(api.url, batch_size=2)
        await asyncio.to_thread(trainer.start)
        assert sink.submit("t9", group()) == "accepted"
        await pull_until(trainer, 1)
        assert len(sink.outbox) == 0
    finally:
        await sink.close(drain_timeout=1)


async def test_an_outage_is_retried_with_growing_waits_until_close(api: AtroposAPI, tmp_path: Path,
                                                                   caplog):
    trainer = TestTrainer(api.url, batch_size=2)
    await asyncio.to_thread(trainer.start)
    caplog.set_level(logging.DEBUG, logger="rollout.trainer.sink")

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.name == "rollout.trainer.sink" and hasattr(r, "retry_attempt")]

    sink = make_sink(tmp_path, api.url)  # trainer.retry_backoff=0.05
    await sink.start()
    try:
        await until(lambda: sink.registration is not None, what="registration")
        api.stop()
        await until(lambda: len(retries()) >= 3, what="three retries while the API is down")
    finally:
        await sink.close(drain_timeout=0)
    assert sink._task is not None and sink._task.done()  # close ended the waiting
    got = retries()
    assert [r.retry_attempt for r in got] == list(range(1, len(got) + 1))
    for r in got[:3]:  # 0.05 doubling (the cap of 10 s is far), plus at most 0.05 of jitter
        low = 0.05 * 2 ** (r.retry_attempt - 1)
        assert low <= r.retry_wait <= low + 0.05, (r.retry_attempt, r.retry_wait)
    warned = [r for r in caplog.records if r.getMessage().startswith("Atropos API unavailable (")
              and r.levelno == logging.WARNING]
    assert len(warned) == 1  # once per outage, not once per retry
