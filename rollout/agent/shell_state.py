"""A terminal whose working directory and exported variables carry over between calls.

`agent.persistent_shell=true` makes the `terminal` tool behave like one shell session of a
trajectory without a long-lived process: each call is still one command of the slot (same
sandbox, limits, timeout and kill as any other), run inside a script that first restores
the session's state and, on the way out (an EXIT trap, so `exit 3` is covered too), writes
the new state to fd 9, which the server returns as the command's stderr. The command's own
stderr goes to its stdout, interleaved as a terminal shows it, so the state is never cut
by the output cap.

What carries over: the working directory and every exported variable (`export -p`, in the
slot shell's own syntax, replayed by the same shell). What does not: unexported variables,
functions, aliases, `unset` of a variable the slot starts with, background processes (they
end with their call, like any command's). A call that leaves no state (killed at its
timeout, fd 9 closed, the output limit) keeps the state from before it, and says so.
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass

STATE_FD = 9
NOT_KEPT = "[the shell's directory and exported variables from this call were not kept]"
GONE_DIR = "[shell: {cwd} no longer exists; this call runs in the workspace]"


@dataclass(frozen=True)
class ShellState:
    cwd: str | None = None  # None: the workspace (the slot's default cwd)
    exports: str = ""  # `export -p` output of the slot's shell, replayed by it


class ShellSession:
    """The state of one trajectory's terminal; `script` wraps a command, `absorb` reads the
    state back from the command's result."""

    def __init__(self) -> None:
        self.state = ShellState()
        token = secrets.token_hex(8)
        self._begin, self._cwd_end, self._end = (f"@@shell-{token}-{part}@@"
                                                 for part in ("begin", "cwd", "end"))

    def script(self, command: str) -> str:
        """`command` as the last part of a script that restores this session first."""
        # One compound command: if fd 9 is gone its redirection fails quietly, and the
        # command's own exit status stands (a failed redirection of `export` alone would
        # end the shell with status 2).
        save = (f'__rc=$?; trap - EXIT; {{ printf "%s\\n%s\\n%s\\n" {self._begin} "$PWD" '
                f'{self._cwd_end}; export -p; printf "%s\\n" {self._end}; }} '
                f'2>/dev/null >&{STATE_FD}; exit $__rc')
        lines = [f"exec {STATE_FD}>&2 2>&1", f"trap {shlex.quote(save)} EXIT"]
        if self.state.exports:
            lines.append(f"command eval {shlex.quote(self.state.exports)}")
        if self.state.cwd is not None:
            message = shlex.quote(GONE_DIR.format(cwd=self.state.cwd))
            lines.append(f"cd -- {shlex.quote(self.state.cwd)} 2>/dev/null || "
                         f"printf '%s\\n' {message}")
        return "\n".join(lines) + "\n" + command + "\n"

    def absorb(self, stderr: str) -> tuple[str, bool]:
        """Take the new state out of the command's stderr. Returns what is left of stderr
        (anything else the command wrote to fd 9) and whether the state was kept."""
        start = stderr.rfind(self._begin + "\n")
        end = stderr.find(self._end + "\n", start + 1) if start >= 0 else -1
        mid = stderr.find("\n" + self._cwd_end + "\n", start) if start >= 0 else -1
        if start < 0 or end < 0 or not start < mid < end:
            return stderr, False
        cwd = stderr[start + len(self._begin) + 1:mid]
        exports = stderr[mid + len(self._cwd_end) + 2:end]
        self.state = ShellState(cwd=cwd or None, exports=exports)
        rest = stderr[:start] + stderr[end + len(self._end) + 1:]
        return rest, True
