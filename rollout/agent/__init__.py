"""The agent: its loop, its tools, and how tool calls are parsed and routed."""
