"""External tools: tools that must never run in a slot (credentials, the outside world).

An external tool is a class registered here by name; its schema carries `"external": true`
(what the agent's tool loop routes by, rollout/agent/toolbox.py, and what `describe_tools` strips
before the model sees it). The tool server (rollout/toolserver/server.py) builds the tools
its config names, each from its own config mapping, and runs them; the agent side only
needs the schemas. A tool's `run` returns the observation text, or raises `ToolFailure`
with the message the model should see.

More tools are plug-ins: `@register` a class in a module the server imports
(`--plugin module.name`).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, ClassVar

EXTERNAL = "external"  # the schema key that marks a tool as run by the tool server


class ToolFailure(Exception):
    """The call failed in a way the model should read (bad argument, refused host)."""


class ExternalTool:
    """Base of external tools. `config` is the tool's own mapping of the server config;
    `secrets` the server's environment values this tool may use (never echoed)."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]
    default_timeout: ClassVar[float] = 30.0

    def __init__(self, config: dict[str, Any], environ: dict[str, str]) -> None:
        self.config = config
        self.timeout = float(config.get("timeout", self.default_timeout))

    @classmethod
    def schema(cls) -> dict[str, Any]:
        return {"type": "function", EXTERNAL: True,
                "function": {"name": cls.name, "description": cls.description,
                             "parameters": copy.deepcopy(cls.parameters)}}

    def secrets(self) -> list[str]:
        """Secret values this tool holds (the server scrubs them from every answer)."""
        return []

    async def run(self, arguments: dict[str, Any]) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        pass


TOOLS: dict[str, type[ExternalTool]] = {}


def register(cls: type[ExternalTool]) -> type[ExternalTool]:
    TOOLS[cls.name] = cls
    return cls


def external_schema(name: str) -> dict[str, Any] | None:
    """The schema of a registered external tool (None: not one)."""
    _load_builtins()
    cls = TOOLS.get(name)
    return cls.schema() if cls is not None else None


def is_external(schema: dict[str, Any]) -> bool:
    return isinstance(schema, dict) and schema.get(EXTERNAL) is True


# The module of the shipped tools, which registers them when imported (by name, as the
# sandbox backends are: the registry stays below the tools that use it).
BUILTIN_MODULE = "rollout.toolserver.builtin"


def _load_builtins() -> None:
    importlib.import_module(BUILTIN_MODULE)


def known() -> list[str]:
    _load_builtins()
    return sorted(TOOLS)


Factory = Callable[[dict[str, Any], dict[str, str]], ExternalTool]
