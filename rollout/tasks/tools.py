"""The canonical OpenAI-style schemas of the agent's tools.

The agent core executes these by name with exactly these argument names:
terminal(command, timeout?), read_file(path), write_file(path, content). Paths are relative to
the slot's workspace (the repository root), which is also the terminal's working directory.
"""

from __future__ import annotations

import copy
from typing import Any

TERMINAL = "terminal"
READ_FILE = "read_file"
WRITE_FILE = "write_file"

_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": TERMINAL,
            "description": (
                "Run a shell command (sh -c) in the repository root and return its exit code, "
                "stdout and stderr. Each call starts a fresh shell: `cd` and exported variables "
                "do not carry over. No network access."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command to run."},
                    "timeout": {
                        "type": "number",
                        "description": "Seconds before the command is killed (default 60).",
                    },
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": READ_FILE,
            "description": "Return the text of a file, given its path relative to the repository root.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "Relative file path."}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": WRITE_FILE,
            "description": (
                "Create or overwrite a file with the given content (parent directories are "
                "created). The path is relative to the repository root."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Relative file path."},
                    "content": {"type": "string", "description": "The full new file content."},
                },
                "required": ["path", "content"],
            },
        },
    },
]


def tool_schemas() -> list[dict[str, Any]]:
    """A fresh copy of the three tool schemas (callers may mutate it)."""
    return copy.deepcopy(_SCHEMAS)
