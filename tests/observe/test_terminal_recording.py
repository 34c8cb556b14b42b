"""One real `launch.py conf=terminal` run of the bundled tmux task (setup-wizard), driven by
a scripted policy that types the task's keystroke solution and also calls the external
tools, with the tool server started by launch and holding a secret. Checked from what the
run left: the score, the recordings and their player in the HTML report (real headless
Chromium), replay's re-check of the recording, and that the secret is nowhere: not in the
run dir, not in the groups sent to the trainer, not in the slot (its environment and
processes are dumped by the agent itself, into the recorded observations)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from rollout.record.casts import final_screen, parse_cast
from rollout.record.events import read_events
from rollout.report import REPORT_FILE
from rollout.tasks.terminal import BUNDLED_TERMINAL
from tests.actors.helpers import groups_jsonl
from tests.launch_config import qwen_tokenizer_dir
from tests.observe.browser import Page

ROOT = Path(__file__).resolve().parents[2]
SECRET_VAR = "ROLLOUT_TEST_FETCH_SECRET"


def _calls(calls: list[dict]) -> str:
    return "".join(f"<tool_call>{json.dumps(c)}</tool_call>\n" for c in calls)


async def _upstream(secret: str) -> tuple[web.AppRunner, str]:
    """A service that wants the secret, and echoes what it got (the tool server scrubs it)."""
    async def page(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "")
        return web.Response(text=f"authorized={got == f'Bearer {secret}'} header={got}")

    app = web.Application()
    app.router.add_get("/status", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def test_tmux_task_records_plays_replays_and_never_leaks_the_secret(tmp_path):
    secret = "s3cr3t-" + secrets.token_hex(16)
    runner, hostport = await _upstream(secret)
    run_dir = tmp_path / "run"
    keystrokes = json.loads((BUNDLED_TERMINAL / "setup-wizard" / "solution.json").read_text())
    # `s3cr3[t]-` matches the secret's prefix but not this command line itself
    dump = ("env; for f in /proc/[0-9]*/environ; do cat $f | xargs -0 -n1 echo; done; "
            "ls -a /tmp /workspace; grep -rls s3cr3[t]- /tmp /workspace /etc "
            "/proc/[0-9]*/environ /proc/[0-9]*/cmdline; echo grep-exit=$?")
    responses = [
        _calls(keystrokes),
        _calls([{"name": "http_fetch", "arguments": {"url": f"http://{hostport}/status"}},
                {"name": "http_fetch", "arguments": {"url": "http://example.org/"}},
                {"name": "calculator", "arguments": {"expression": "6*7"}},
                {"name": "terminal", "arguments": {"command": dump}}]),
        "Done.",
    ]
    quoted = ",".join("'" + r + "'" for r in responses)
    assert "'" not in "".join(responses) and "${" not in "".join(responses)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SECRET_VAR: secret}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "launch.py"), "conf=terminal", f"run.dir={run_dir}",
            "policy=scripted", f"policy.tokenizer={qwen_tokenizer_dir()}",
            f"policy.responses=[{quoted}]", "tasks.filter=setup-wizard", "env.group_size=1",
            "env.include_messages=true", "workers.num=1", "backend.slots_per_host=1",
            "agent.tools=[http_fetch,calculator]", "tool_server.launch=true",
            f"tool_server.secret_env=[{SECRET_VAR}]",
            f"tool_server.tools={{http_fetch:{{allow_hosts:['{hostport}'],"
            f"auth:[{{host:'{hostport}',env:{SECRET_VAR}}}]}}}}",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        out = (await asyncio.wait_for(proc.communicate(), 240))[0].decode()
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, out[-4000:]
    import psutil  # launch stopped the tool server it started (its config names our host)

    assert not [p for p in psutil.process_iter(["cmdline"])
                if "rollout.toolserver" in " ".join(p.info.get("cmdline") or [])
                and hostport in " ".join(p.info.get("cmdline") or [])]
    [group] = groups_jsonl(run_dir)
    assert group["scores"] == [1.0], json.dumps(group.get("_meta"))[-2000:]

    [line] = list(read_events(run_dir))
    tools = [ev[3] for ev in line["ev"] if ev[0] == "tool"]
    by_name = {}
    for t in tools:
        by_name.setdefault(t["name"], []).append(t)
    ok, refused = by_name["http_fetch"]
    assert "authorized=True" in ok["out"] and "[secret removed]" in ok["out"] and not ok["err"]
    assert refused["err"] and "Refused: host example.org is not on the allow-list" in refused["out"]
    assert by_name["calculator"][0]["out"] == "42"
    slot_view = by_name["terminal"][0]["out"]
    assert "PATH=" in slot_view and "grep-exit=1" in slot_view  # dumped; no file holds it

    # The secret is nowhere in the run dir (events, casts, report, logs, groups.jsonl, the
    # outbox, config.yaml), so not in the groups sent to the trainer, nor in what the slot's
    # own environment and processes showed the agent.
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "groups.jsonl" for p in files) and len(files) > 5
    assert [p for p in files if secret.encode() in p.read_bytes()] == []
    assert secret not in out

    # The recordings: valid casts beside events.jsonl; the tmux one ends on the screen the
    # last capture returned.
    assert sorted(line["casts"]) == ["shell", "tmux"]
    tmux_cast = (run_dir / line["casts"]["tmux"]).read_text()
    header, frames = parse_cast(tmux_cast)
    assert (header["width"], header["height"]) == (80, 24) and len(frames) >= 6
    captured = by_name["tmux"][-1]["out"].rsplit("\n", 1)[0]
    assert final_screen(tmux_cast) == captured and "app.conf written." in captured

    # The report plays it.
    async with Page() as page:
        await page.goto((run_dir / REPORT_FILE).as_uri())
        assert await page.js("document.body.dataset.rendered") == "yes"
        player = "document.querySelector('.player[data-kind=tmux]')"
        assert await page.js(f"Number({player}.dataset.frames)") == len(frames)
        screens = await page.js(f"""(() => {{ const p = {player}, s = p.querySelector('input');
            const out = [];
            for (let i = 0; i < Number(p.dataset.frames); i++) {{
              s.value = i; s.dispatchEvent(new Event('input'));
              out.push(p.querySelector('pre.term').textContent.replace(/\\n+$/, ''));
            }}
            return out; }})()""")
        assert any("> postgres" in s for s in screens) and any("Port:" in s for s in screens)
        await page.js(f"(() => {{ const p = {player}; p.dataset.speed = 100; "
                      f"p.querySelector('button').click(); }})()")
        await page.js(f"""new Promise(done => {{ const t = setInterval(() => {{
            if ({player}.dataset.playing === 'no') {{ clearInterval(t); done(true); }} }}, 50); }})""")
        shown = await page.js(f"{player}.querySelector('pre.term').textContent")
        assert shown.rstrip("\n") == captured
        assert await page.js("document.querySelectorAll('.player[data-kind=shell]').length") == 1
        assert page.errors == []

    # Replay re-runs the keystrokes in a fresh slot: same score, same last screen.
    replay = subprocess.run([sys.executable, "-m", "rollout.replay", str(run_dir), "--all"],
                            cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "reproduces" in replay.stdout
