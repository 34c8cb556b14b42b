"""Per-trajectory events in the run dir (events.jsonl): what a gold run records, and the
event log's own guarantees."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rollout.record.events import EVENTS_FILE, EventLog, read_events
from tests.actors.helpers import groups_jsonl
from tests.observe.conftest import GOLD_TASKS, GROUP_SIZE


def test_a_gold_run_records_every_trajectory_phase_by_phase(gold_run):
    lines = list(read_events(gold_run.run_dir))
    assert len(lines) == GOLD_TASKS * GROUP_SIZE
    delivered = {m["trajectory_id"] for g in groups_jsonl(gold_run.run_dir) for m in g["_meta"]}
    assert {line["id"] for line in lines} == delivered
    for line in lines:
        assert line["v"] == 1 and line["outcome"] == "done" and line["score"] == 1.0
        assert line["group"] == "accepted" and line["attempt"] == 1 and line["worker"]
        kinds = [ev[0] for ev in line["ev"]]
        # acquire, prepare, then turns and tool calls alternating, verify, send
        assert kinds[:2] == ["acquire", "prepare"] and kinds[-2:] == ["verify", "send"]
        middle = kinds[2:-2]
        assert middle.count("turn") == line["turns"] == middle.count("tool") + 1
        offsets = [ev[1] for ev in line["ev"]]
        assert offsets == sorted(offsets) and all(ev[2] >= 0 for ev in line["ev"])
        tools = [ev[3] for ev in line["ev"] if ev[0] == "tool"]
        # the gold script writes the patch, then applies it with a terminal command
        assert tools[0]["name"] == "write_file" and tools[0]["exit"] is None
        terminal = [t for t in tools if t["name"] == "terminal"]
        assert terminal and all(t["exit"] == 0 and not t["err"] for t in terminal)
        assert all(t["args"]["command"] for t in terminal)
        verify = line["ev"][-2][3]
        assert verify["score"] == 1.0 and verify["reason"] == "all tests passed"
        assert verify["tests"] and set(verify["tests"].values()) == {"PASSED"}
        assert line["ev"][-1][3] == {"result": "accepted"}


async def test_the_event_log_buffers_writes_on_close_and_survives_a_bad_dir(tmp_path, caplog):
    log = EventLog(tmp_path)
    await log.start()
    log.add([{"id": "a", "ev": []}, {"id": "b", "ev": [["tool", 0.0, 0.1, {"out": "</x>"}]]}])
    assert not (tmp_path / EVENTS_FILE).exists()  # add() does no I/O
    await log.close()
    assert [line["id"] for line in read_events(tmp_path)] == ["a", "b"]
    # a partial last line (a file being written) is skipped by readers
    with (tmp_path / EVENTS_FILE).open("a") as fh:
        fh.write('{"id": "c", "ev"')
    assert [line["id"] for line in read_events(tmp_path)] == ["a", "b"]

    gone = EventLog(tmp_path / "missing")
    gone.add([{"id": "kept", "casts": {"tmux": '{"version": 2}\n'}}])
    with caplog.at_level(logging.ERROR):
        await gone.flush()
        await gone.flush()
    assert sum("cannot write" in r.message for r in caplog.records) == 1  # logged once
    (tmp_path / "missing").mkdir()
    await gone.close()  # the dir is back: nothing was lost
    [kept] = [json.loads(x) for x in Path(tmp_path / "missing" / EVENTS_FILE).read_text().splitlines()]
    # a recording is written beside the events, and the line names its file
    assert kept["id"] == "kept" and kept["casts"] == {"tmux": "casts/kept.tmux.cast"}
    assert (tmp_path / "missing" / "casts" / "kept.tmux.cast").read_text() == '{"version": 2}\n'
