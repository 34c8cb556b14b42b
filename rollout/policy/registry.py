"""Policy types by name: `policy.type` finds its settings model, its client and what a launch
checks and starts for it here, never an if-chain.

Each type registers a `PolicyKind` (the built-in ones in rollout/policy/__init__.py); its
client module is imported only when a client is built, so a type's dependencies are only
needed when a run uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.policy import PolicyConfig
    from rollout.policy.conversation import TokenPolicy
    from rollout.policy.template import ChatRenderer


@dataclass(frozen=True)
class PolicyKind:
    """One policy type.

    settings: its config model (a `PolicyConfig` subclass: the keys only it reads, its checks).
    make: builds the client from the validated config, the chat renderer and the task env
        (only a type that replays the task's reference solution needs the env).
    probe_path: what preflight GETs at `policy.base_url` to see the server answers (None:
        nothing to probe, the client talks to no server).
    serve: the server launch starts itself when `policy.base_url` is empty (called with its
        log file and the host to listen on; `start()` gives its URL, `stop()` ends it).
    local_tokenizer: `policy.tokenizer=embedded` (the bundled model's own) is allowed.
    reference: it replays each task's reference solution (a run then says which failed).
    """

    name: str
    settings: type[PolicyConfig]
    make: Callable[[Any, ChatRenderer, Any], TokenPolicy]
    probe_path: str | None = None
    serve: Callable[[Path, str], Any] | None = None
    local_tokenizer: bool = False
    reference: bool = False


_REGISTRY: dict[str, PolicyKind] = {}


def register(kind: PolicyKind) -> PolicyKind:
    _REGISTRY[kind.name] = kind
    return kind


def names() -> list[str]:
    """The registered types, in the order they were registered."""
    return list(_REGISTRY)


def policy_kind(name: str) -> PolicyKind:
    """The type `name` (KeyError if none is registered; `PolicyConfig` reports it first)."""
    return _REGISTRY[name]
