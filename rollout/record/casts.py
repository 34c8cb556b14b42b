"""Terminal recordings of a trajectory as asciinema v2 casts.

A cast is newline-delimited JSON: a header object, then one `[time, "o", data]` event per
piece of output, `time` in seconds from the start of the recording
(https://docs.asciinema.org/manual/asciicast/v2/). Two kinds are recorded:

- `shell`: the plain `terminal` tool as a shell session: `$ command`, then its output;
- `tmux`: the interactive terminal (rollout/agent/tmux_tool.py) as the screens it showed: every
  screen change the tool saw while it waited, and the screen it returned, each one a full
  redraw (clear, home, the screen's lines), so a player needs no terminal state beyond
  the current frame and the final frame is exactly what the model was shown.

Casts travel with the trajectory's event line (`Trace.casts`) and are written by the event
log to `<run_dir>/casts/` (rollout/record/events.py); the HTML report plays them, replay compares
its own tmux screens with them.

`Screen` is the small terminal the report's JavaScript player also implements (printable
text, CR, LF, backspace, tab, clear, cursor home/position; other escape sequences are
skipped): enough for both kinds above, and how tests and replay read a cast's last screen.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

CASTS_DIR = "casts"
CLEAR = "\x1b[H\x1b[2J"
MAX_CAST_BYTES = 2_000_000  # per recording: a cast past it stops recording, and says so


@dataclass
class Cast:
    """One recording being made. `t0` is monotonic; `output` takes monotonic times too."""

    width: int = 80
    height: int = 24
    title: str = ""
    t0: float = field(default_factory=time.monotonic)
    timestamp: int = field(default_factory=lambda: int(time.time()))
    events: list[tuple[float, str]] = field(default_factory=list)
    size: int = 0
    full: bool = False

    def output(self, data: str, at: float | None = None) -> None:
        if not data or self.full:
            return
        t = max((time.monotonic() if at is None else at) - self.t0, 0.0)
        if self.events and t < self.events[-1][0]:
            t = self.events[-1][0]  # casts are monotonic even if a frame's clock was early
        if self.size + len(data) > MAX_CAST_BYTES:
            data, self.full = "\r\n[recording stopped: over its size limit]\r\n", True
        self.size += len(data)
        self.events.append((round(t, 4), data))

    def frame(self, screen: str, at: float | None = None) -> None:
        """A whole screen (lines separated by newlines) as one full redraw; the same screen
        twice in a row is recorded once."""
        data = CLEAR + "\r\n".join(screen.split("\n"))
        if self.events and self.events[-1][1] == data:
            return
        self.output(data, at)

    def to_text(self) -> str:
        header = {"version": 2, "width": self.width, "height": self.height,
                  "timestamp": self.timestamp, "title": self.title,
                  "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"}}
        lines = [json.dumps(header)]
        lines += [json.dumps([t, "o", d], ensure_ascii=False) for t, d in self.events]
        return "\n".join(lines) + "\n"


class CastError(ValueError):
    """A cast that is not a valid asciinema v2 recording."""


def parse_cast(text: str) -> tuple[dict[str, Any], list[tuple[float, str]]]:
    """Header and output events of a cast; raises CastError for anything not v2-shaped
    (times must not go backwards)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise CastError("empty cast")
    try:
        header = json.loads(lines[0])
        raw = [json.loads(ln) for ln in lines[1:]]
    except json.JSONDecodeError as e:
        raise CastError(f"not JSON lines: {e}") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CastError("header is not an asciinema v2 header")
    if not all(isinstance(header.get(k), int) and header[k] > 0 for k in ("width", "height")):
        raise CastError("header needs positive width and height")
    events: list[tuple[float, str]] = []
    last = 0.0
    for ev in raw:
        if not (isinstance(ev, list) and len(ev) == 3 and isinstance(ev[0], (int, float))
                and isinstance(ev[1], str) and isinstance(ev[2], str)):
            raise CastError(f"bad event {str(ev)[:80]}")
        if ev[0] < last:
            raise CastError(f"time goes backwards at {ev[0]}")
        last = ev[0]
        if ev[1] == "o":
            events.append((float(ev[0]), ev[2]))
    return header, events


_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
_OTHER_ESC = re.compile(r"\x1b(\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMNOZc])")


class Screen:
    """The tiny terminal of the report's player (see the module doc)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [[" "] * width for _ in range(height)]
        self.x = self.y = 0

    def feed(self, data: str) -> None:
        i = 0
        while i < len(data):
            ch = data[i]
            if ch == "\x1b":
                m = _CSI.match(data, i) or _OTHER_ESC.match(data, i)
                if m is None:
                    i += 1
                    continue
                if m.re is _CSI:
                    self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            i += 1
            if ch == "\r":
                self.x = 0
            elif ch == "\n":
                self._newline()
            elif ch == "\b":
                self.x = max(self.x - 1, 0)
            elif ch == "\t":
                self.x = min((self.x // 8 + 1) * 8, self.width - 1)
            elif ch >= " ":
                if self.x >= self.width:
                    self.x = 0
                    self._newline()
                self.rows[self.y][self.x] = ch
                self.x += 1

    def _newline(self) -> None:
        if self.y == self.height - 1:
            self.rows.pop(0)
            self.rows.append([" "] * self.width)
        else:
            self.y += 1

    def _csi(self, params: str, final: str) -> None:
        nums = [int(p) if p.isdigit() else 0 for p in params.lstrip("?").split(";")] if params else []
        if final in "Hf":
            row = (nums[0] if nums and nums[0] else 1) - 1
            col = (nums[1] if len(nums) > 1 and nums[1] else 1) - 1
            self.y, self.x = min(row, self.height - 1), min(col, self.width - 1)
        elif final == "J" and (nums[:1] or [0])[0] == 2:
            self.rows = [[" "] * self.width for _ in range(self.height)]
        elif final == "K":
            self.rows[self.y][self.x:] = [" "] * (self.width - self.x)

    def text(self) -> str:
        """The screen's lines, trailing spaces and trailing empty lines removed."""
        lines = ["".join(r).rstrip() for r in self.rows]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)


def final_screen(text: str) -> str:
    """The screen a cast ends on (as `Screen.text`)."""
    header, events = parse_cast(text)
    screen = Screen(header["width"], header["height"])
    for _, data in events:
        screen.feed(data)
    return screen.text()


def cast_name(trajectory_id: str, kind: str) -> str:
    """The cast's file name under casts/ (a trajectory id has slashes: `worker/task/n`)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", trajectory_id).strip("._") or "trajectory"
    return f"{safe}.{kind}.cast"
