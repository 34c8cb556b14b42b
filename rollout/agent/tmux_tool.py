"""The interactive terminal tool (`tmux`): one tmux session per trajectory, inside its slot.

For programs a command that returns cannot drive: editors, REPLs, curses installers, `top`.
The model starts the session, sends keys, reads the screen, stops it:

    {"action": "send", "keys": ["vim notes.txt", "Enter"], "wait": "settle"}

Every action is one ordinary command of the slot (`Sandbox.exec`: same limits, isolation,
timeout and kill as any other); the tmux server it starts is a process of the slot, so it
lives between calls (slots are long-lived containers) and dies at the slot's reset like
everything else in it. The session's socket is private to the trajectory (a random name
under /tmp), its shell is `bash --norc` (else `sh`) with a fixed prompt, its size fixed.

Keys: each item of `keys` is a tmux key name (Enter, Escape, Tab, BSpace, Up, Down, Left,
Right, Home, End, PageUp, PageDown, Space, F1..F12, C-<x>, M-<x>) or else literal text.
Waiting after the keys, all bounded by the call's timeout, polled inside the slot:
- `settle` (default): until the screen has not changed for `settle` seconds (0.3);
- `prompt`: until the shell is in the foreground again and its screen settled;
- `none`: capture at once;
and with `until` (any wait): until that text is on the screen.
The observation is the screen (trailing blanks trimmed) and one status line. With a `Cast`
the screens seen while waiting are recorded with their times (rollout/record/casts.py).
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from typing import Any

from rollout.record.casts import Cast
from rollout.protocols import Sandbox
from rollout.types import ToolLimits

WIDTH, HEIGHT = 80, 24
SETTLE = 0.3  # seconds the screen must stay the same to count as settled
POLL = 0.05
PROMPT = "$ "
MAX_KEYS = 200

KEY_NAMES = frozenset(
    ["Enter", "Escape", "Tab", "BTab", "BSpace", "Up", "Down", "Left", "Right", "Home", "End",
     "PageUp", "PageDown", "PgUp", "PgDn", "Space", "IC", "DC", "Insert", "Delete"]
    + [f"F{i}" for i in range(1, 13)])
_MODIFIED = re.compile(r"^(C|M|S)-(.|[A-Z][A-Za-z]*|F\d{1,2})$")

TMUX_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "tmux",
        "description": (
            "An interactive terminal (80x24) for full-screen or interactive programs (editors, "
            "REPLs, installers that ask questions). action=start opens it (send and capture "
            "open it too), send types keys and returns the screen, capture returns the screen, "
            "stop closes it. Each item of keys is a key name (Enter, Escape, Tab, BSpace, Up, "
            "Down, Left, Right, Home, End, PageUp, PageDown, Space, F1-F12, C-c for Ctrl-C, "
            "M-x for Alt-x) or literal text. wait: settle (default: until the screen stops "
            "changing), prompt (until the shell prompt is back) or none; until: wait for this "
            "text to show on the screen."),
        "parameters": {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["start", "send", "capture", "stop"]},
                "keys": {"type": "array", "items": {"type": "string"},
                         "description": "Keys and text to send, in order (action=send)."},
                "wait": {"type": "string", "enum": ["settle", "prompt", "none"]},
                "until": {"type": "string",
                          "description": "Wait until this text shows on the screen."},
                "timeout": {"type": "number",
                            "description": "Seconds to wait at most after the keys."},
            },
            "required": ["action"],
        },
    },
}


class TmuxArgumentError(ValueError):
    """Arguments the model must fix; the message is its observation."""


def key_args(keys: list[str]) -> list[list[str]]:
    """`send-keys` argument lists for `keys`: key names as keys, anything else literal (-l)."""
    out: list[list[str]] = []
    for k in keys:
        if not isinstance(k, str):
            raise TmuxArgumentError(f"every item of 'keys' must be a string, got {type(k).__name__}")
        if not k:
            continue
        if k in KEY_NAMES or _MODIFIED.match(k):
            out.append([k])
        else:
            out.append(["-l", "--", k])
    return out


class TmuxSession:
    """The trajectory's terminal. Not thread-safe (one trajectory = one asyncio task)."""

    def __init__(self, sandbox: Sandbox, limits: ToolLimits, cast: Cast | None = None) -> None:
        self.sandbox = sandbox
        self.limits = limits
        self.cast = cast
        self.socket = f"/tmp/.rollout-tmux-{secrets.token_hex(6)}"
        self.started = False
        self._mark = f"@@frame-{secrets.token_hex(6)}@@"

    def _tmux(self, *args: str) -> str:
        return "tmux -S " + shlex.quote(self.socket) + " " + " ".join(map(shlex.quote, args))

    def _start_script(self) -> str:
        # The shell's own dotfiles stay out of it: a fixed prompt `wait=prompt` and the model
        # can both rely on.
        shell = ("if command -v bash >/dev/null 2>&1; then sh_=bash; "
                 "set -- bash --norc --noprofile; else sh_=sh; set -- sh; fi")
        return "\n".join([
            "command -v tmux >/dev/null 2>&1 || { echo 'tmux is not installed in this "
            "sandbox' >&2; exit 127; }",
            shell,
            self._tmux("has-session", "-t", "main") + " 2>/dev/null && exit 0",
            "TERM=xterm-256color PS1=" + shlex.quote(PROMPT) + " " + self._tmux(
                "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", str(WIDTH),
                "-y", str(HEIGHT)) + ' "$@" || exit $?',
            # no status bar: the screen is the program's whole 80x24
            self._tmux("set-option", "-t", "main", "status", "off") + " >/dev/null",
        ])

    async def start(self, timeout: float) -> str:
        res = await self.sandbox.exec(self._start_script(), timeout=timeout)
        if not res.ok:
            raise TmuxArgumentError(
                f"could not start the terminal (exit {res.exit_code}): "
                f"{(res.stderr or res.stdout).strip()[-500:]}")
        self.started = True
        # The first screen once the shell has drawn its prompt (a bare capture can come before
        # the shell has printed anything, on a loaded machine).
        return await self._run(self._wait_script("prompt", timeout, until=PROMPT.strip()),
                               timeout)

    def _wait_script(self, wait: str, timeout: float, until: str | None = None) -> str:
        """Poll the screen inside the slot; print each new screen after a frame mark with
        its milliseconds since the keys were sent. One tmux client per poll reads both the
        screen and, as its last line, the foreground program and cursor."""
        settle_ms = int(SETTLE * 1000) if wait != "none" or until else 0
        look = (self._tmux("capture-pane", "-p", "-t", "main") + " \\; display-message -p -t main "
                + shlex.quote("#{pane_current_command} #{cursor_x},#{cursor_y}"))
        mark = self._mark
        if settle_ms == 0:  # no wait: one look, no clock
            return (f"cur=$({look}) || exit 3\n"
                    f"printf '%s 0\\n%s\\n%s end\\n' '{mark}' \"$cur\" '{mark}'\n")
        wait_text = ""
        if until:
            wait_text = f"case \"$cur\" in *{shlex.quote(until)}*) ;; *) last=$now;; esac"
        return f"""
ms() {{ echo $(( $(date +%s%N) / 1000000 )); }}
nl='
'
t0=$(ms); prev=; last=$t0; first=1
while :; do
  cur=$({look}) || exit 3
  now=$(ms)
  if [ -n "$first" ] || [ "$cur" != "$prev" ]; then
    printf '%s %s\\n%s\\n' '{mark}' $((now - t0)) "$cur"; prev=$cur; last=$now; first=
  fi
  {wait_text}
  if [ $((now - last)) -ge {settle_ms} ]; then
    [ {int(wait == "prompt")} -eq 0 ] && break
    info=${{cur##*"$nl"}}
    case "${{info%% *}}" in bash|sh|dash) break;; esac
  fi
  [ $((now - t0)) -ge {int(timeout * 1000)} ] && {{ printf '%s timeout\\n' '{mark}'; break; }}
  sleep {POLL}
done
printf '%s end\\n' '{mark}'
"""

    async def send(self, keys: list[str], wait: str, timeout: float,
                   until: str | None = None) -> str:
        sends = key_args(keys)
        if len(sends) > MAX_KEYS:
            raise TmuxArgumentError(f"at most {MAX_KEYS} items of keys per call")
        if not self.started:
            await self.start(timeout)
        script = "\n".join([self._tmux("send-keys", "-t", "main", *a) + " || exit 3"
                            for a in sends] + [self._wait_script(wait, timeout, until)])
        return await self._run(script, timeout)

    async def capture(self, timeout: float) -> str:
        if not self.started:
            return await self.start(timeout)
        return await self._run(self._wait_script("none", timeout), timeout)

    async def _run(self, script: str, timeout: float) -> str:
        sent = time.monotonic()
        # a margin over the in-slot wait, so the loop's own timeout wins over the kill
        res = await self.sandbox.exec(script, timeout=timeout + 5.0)
        if res.exit_code == 3 or (not res.ok and self._mark not in res.stdout):
            self.started = False
            raise TmuxArgumentError(
                "the terminal session is gone (its shell exited or it was stopped); "
                "action=start opens a new one")
        screen, info, timed_out = self._frames(res.stdout, sent)
        status = f"[tmux: {info or 'unknown'}"
        if timed_out:
            status += f"; still changing after {timeout:g}s"
        return _trim(screen) + "\n" + status + "]"

    def _frames(self, out: str, sent: float) -> tuple[str, str, bool]:
        """The last screen, the foreground program and cursor, whether the wait timed out;
        every screen goes to the cast at its in-slot time."""
        screen, info, timed_out = "", "", False
        for part in out.split(self._mark + " ")[1:]:
            head, _, body = part.partition("\n")
            if head == "timeout":
                timed_out = True
            elif head.isdigit():
                body = body[:-1] if body.endswith("\n") else body
                screen, _, last = body.rpartition("\n")
                info = _describe(last.strip())
                if self.cast is not None:
                    self.cast.frame(screen, at=sent + int(head) / 1000)
        return screen, info, timed_out

    async def stop(self, timeout: float = 10.0) -> str:
        if not self.started:
            return "No terminal is open."
        self.started = False
        # kill-server returns before the server has exited: wait (bounded) until its process
        # is gone, so a closed terminal has nothing left running in the slot.
        pid = self._tmux("display-message", "-p", "#{pid}")
        await self.sandbox.exec(
            f"pid=$({pid} 2>/dev/null); " + self._tmux("kill-server") + " 2>/dev/null; "
            "i=0; while [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null && [ $i -lt 200 ]; "
            "do sleep 0.025; i=$((i + 1)); done; rm -f " + shlex.quote(self.socket),
            timeout=timeout)
        return "Terminal closed."


def _describe(info: str) -> str:
    program, _, cursor = info.partition(" ")
    return f"foreground {program or '?'}, cursor {cursor or '?'}"


def _trim(screen: str) -> str:
    lines = [ln.rstrip() for ln in screen.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
