"""The HTML run report of a real gold run, opened in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.record.events import read_events
from rollout.report import REPORT_FILE, build_report
from rollout.report.data import collect, reliability
from tests.observe.browser import Page

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("throughput", "slots", "scores", "phases", "outcomes", "drops")


async def test_the_report_renders_its_plots_and_shows_tool_calls_in_chromium(gold_run):
    report = gold_run.run_dir / REPORT_FILE
    assert report.exists()
    page_text = report.read_text()
    assert "http://" not in page_text.replace("http://www.w3.org/2000/svg", "")  # no CDN
    lines = sorted(read_events(gold_run.run_dir), key=lambda t: (t["task"], t["attempt"], t["id"]))
    first = lines[0]
    async with Page() as page:
        await page.goto(report.as_uri())
        assert await page.js("document.body.dataset.rendered") == "yes"
        for plot in PLOTS:  # every plot drew something inside its SVG
            drawn = await page.js(f"document.querySelector('#{plot} svg').querySelectorAll("
                                  "'path,rect,circle').length")
            if plot == "drops":  # a gold run drops nothing: the plot says so
                assert drawn == 0 and await page.js(
                    "document.querySelector('#drops svg').textContent") == "none"
            else:
                assert drawn > 0, plot
        # the slot plot has a line with real points (the timeline of the run)
        assert await page.js("document.querySelector('#slots svg path').getAttribute('d').split('L').length") > 1
        figures = await page.js("document.getElementById('figures').innerText")
        assert "success rate" in figures and "100.0%" in figures and "no retries" in figures
        # the viewer opens on the first task's first trajectory: its tool calls are there
        shown = await page.js("[...document.querySelectorAll('#trajectory .ev.tool')].map("
                              "e => e.querySelector('.out').textContent)")
        assert shown == [ev[3]["out"] for ev in first["ev"] if ev[0] == "tool"]
        commands = await page.js("[...document.querySelectorAll('#trajectory .ev.tool .args')]"
                                 ".map(e => e.textContent).join('\\n')")
        assert "git apply" in commands
        # pick another task: its trajectory replaces the first one
        other = next(t for t in lines if t["task"] == lines[-1]["task"])  # its first one
        await page.js(f"(() => {{const s = document.getElementById('task'); s.value = {other['task']!r};"
                      " s.dispatchEvent(new Event('change'));})()")
        header = await page.js("document.querySelector('#trajectory div').textContent")
        assert header.startswith(other["id"])
        assert "score 1" in header and await page.js("document.querySelectorAll('#trajs button').length") == 2
        assert await page.js(LABELS_OUTSIDE) == []
        assert page.errors == []


def test_python_m_rollout_report_rebuilds_it_from_the_run_dir_alone(gold_run, tmp_path):
    copy = tmp_path / "copied-run"
    shutil.copytree(gold_run.run_dir, copy)
    (copy / REPORT_FILE).unlink()
    proc = subprocess.run([sys.executable, "-m", "rollout.report", str(copy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (copy / REPORT_FILE).exists() and str(copy) in (copy / REPORT_FILE).read_text()
    bad = subprocess.run([sys.executable, "-m", "rollout.report", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_reliability_figures_of_the_gold_run(gold_run):
    data = collect(gold_run.run_dir)
    r = data["reliability"]
    assert r["trajectories"] == 8 and r["success_rate"] == 1.0 and r["solved_rate"] == 1.0
    assert r["tool_calls"] == 16 and 0 < r["tool_p50"] <= r["tool_p99"]
    assert 0 < r["completion_p50"] <= r["completion_p99"]
    assert r["mean_time_to_error"] is None and r["retry_success_rate"] is None
    assert data["outcomes"] == {"done": 8} and data["drops"] == {}
    assert data["finished"] and data["slots"] and max(p[2] for p in data["slots"]) > 0


def _line(task: str, attempt: int, outcome: str, group: str, t0: float, wall: float) -> dict:
    return {"id": f"w/{task}/{attempt}", "task": task, "attempt": attempt, "outcome": outcome,
            "group": group, "t0": t0, "wall": wall, "score": 1.0 if group == "accepted" else 0.0,
            "ev": [["tool", 0.0, 0.5, {}], ["verify", 0.5, wall - 0.5, {}]]}


def test_reliability_counts_errors_and_retries():
    lines = [
        _line("a", 1, "sandbox_error", "retry: sandbox_error: host died", 0.0, 10.0),
        _line("a", 2, "done", "accepted", 10.0, 10.0),      # a retry that worked
        _line("b", 1, "grading_error", "retry: grading_error: timeout", 0.0, 5.0),
        _line("b", 2, "grading_error", "retry: grading_error: timeout", 5.0, 5.0),  # never worked
        _line("c", 1, "done", "accepted", 0.0, 40.0),
    ]
    r = reliability(lines)
    assert r["success_rate"] == pytest.approx(2 / 5)
    assert r["mean_time_to_error"] == pytest.approx(40.0 / 3)  # 40 s recorded, 3 errors
    assert r["retried_tasks"] == 2 and r["retry_success_rate"] == pytest.approx(0.5)
    assert r["tool_p50"] == pytest.approx(0.5)


def test_a_report_of_a_run_with_nothing_recorded_yet_still_builds(tmp_path):
    out = build_report(tmp_path)
    text = out.read_text()
    assert "in progress" in text and '"trajectories":0' in text


async def test_a_report_with_failures_retries_and_drops_renders_without_errors(tmp_path):
    import json

    lines = [
        {**_line("a", 1, "sandbox_error", "retry: sandbox_error: host died", 0.0, 3.0),
         "ev": [["acquire", 0.0, 2.0, {"waited": None, "ok": False}]], "error": "no slot"},
        {**_line("a", 2, "done", "accepted", 3.0, 4.0), "ev": [
            ["acquire", 0.0, 0.1, {"waited": 0.1}], ["prepare", 0.1, 0.5, {"ok": True}],
            ["turn", 0.6, 0.2, {"n": 1, "tok": 5, "fin": "stop", "text": "<tool_call>x</tool_call>"}],
            ["tool", 0.8, 0.0, {"name": "nope", "args": {}, "exit": None, "err": True,
                                "out": "bad call", "parse_error": True}],
            ["tool", 0.8, 0.3, {"name": "terminal", "args": {"command": "false"}, "exit": 1,
                                "err": False, "out": "[exit code: 1]"}],
            ["verify", 1.1, 2.0, {"score": 1.0, "reason": "all tests passed", "tests": {}, "log": ""}],
            ["send", 3.1, 0.01, {"result": "accepted"}]]},
        {**_line("b", 1, "grading_error", "retry: grading_error: timeout", 0.0, 5.0), "ev": [
            ["verify", 0.0, 5.0, {"score": 0.0, "reason": None, "tests": {}, "log": "",
                                  "error": "grading (timeout): slow"}]]},
        {**_line("c", 1, "done", "all_scores_equal", 0.0, 2.0), "score": 0.0},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "queue_state.json").write_text(json.dumps(
        {"dropped": {"b": "grading_error: timeout (after 3 attempts)"}}))
    report = build_report(tmp_path)
    assert collect(tmp_path)["drops"] == {"retried: sandbox_error": 1, "retried: grading_error": 1,
                                          "trainer: all_scores_equal": 1, "dropped: grading_error": 1}
    async with Page() as page:
        await page.goto(report.as_uri())
        assert await page.js("document.body.dataset.rendered") == "yes"
        assert await page.js("document.querySelectorAll('#drops svg rect').length") == 4
        assert await page.js("document.querySelectorAll('#trajectory .ev.bad').length") == 1
        await page.js("document.querySelectorAll('#trajs button')[1].click()")  # a's 2nd attempt
        assert await page.js("document.querySelectorAll('#trajectory .ev.bad').length") == 2
        assert page.errors == []


# Every <text> of every chart, with how far it sticks out of its SVG's box (CSS pixels).
LABELS_OUTSIDE = """[...document.querySelectorAll('main section svg')].flatMap(s => {
  const box = s.getBoundingClientRect();
  return [...s.querySelectorAll('text')].map(t => {
    const b = t.getBoundingClientRect();
    const out = Math.max(box.left - b.left, b.right - box.right, box.top - b.top,
                         b.bottom - box.bottom);
    return [s.parentElement.id, t.textContent, Math.round(out * 10) / 10];
  }).filter(x => x[2] > 0.5);
})"""


def _slow_group_run(run_dir: Path) -> Path:
    """Two trajectories of one group: `fast` graded at 38.7 s, `slow` at 116.37 s; both
    lines are written when the group is done, so both walls are the group's 116.4 s."""
    import json

    def line(tid: str, graded_at: float) -> dict:
        return {"id": tid, "task": "task-with-a-rather-long-name-that-needs-shortening",
                "attempt": 1, "outcome": "done", "group": "accepted", "t0": 1000.0,
                "wall": 116.4, "score": 1.0, "turns": 1, "tokens": 10, "ev": [
                    ["acquire", 0.0, 0.1, {"waited": 0.1}],
                    ["tool", 0.1, 1.0, {"name": "terminal", "args": {"command": "ls"},
                                        "exit": 0, "err": False, "out": ""}],
                    ["verify", 1.1, graded_at - 1.1, {"score": 1.0, "reason": "ok",
                                                       "tests": {}, "log": ""}],
                    ["send", 116.37, 0.03, {"result": "accepted"}]]}

    lines = [line("w/fast", 38.7), line("w/slow", 116.37)]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return build_report(run_dir)


async def test_a_trajectory_shows_its_own_time_and_chart_labels_stay_inside_their_charts(tmp_path):
    report = _slow_group_run(tmp_path)
    async with Page() as page:
        await page.goto(report.as_uri())
        assert await page.js("document.body.dataset.rendered") == "yes"
        header = await page.js("document.querySelector('#trajectory div').textContent")
        assert header.startswith("w/fast") and "graded after 38.70 s" in header, header
        assert "group done after 116.40 s" in header, header  # the wait is labelled as such
        await page.js("document.querySelectorAll('#trajs button')[1].click()")
        header = await page.js("document.querySelector('#trajectory div').textContent")
        assert header.startswith("w/slow") and "graded after 116.37 s" in header, header
        # the right-most labels of these charts are long ("116.40 s", "116.4"): none is cut
        assert await page.js(LABELS_OUTSIDE) == []
        assert await page.js("document.querySelectorAll('main section svg text').length") > 10
        assert page.errors == []
