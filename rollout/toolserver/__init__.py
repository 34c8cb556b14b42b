"""The external tool server: tools that run outside every slot (see registry.py, server.py)."""

from rollout.toolserver.registry import EXTERNAL, ExternalTool, ToolFailure, register

__all__ = ["EXTERNAL", "ExternalTool", "ToolFailure", "register"]
