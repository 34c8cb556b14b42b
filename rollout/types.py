"""Plain data types shared across the project. No Ray, no I/O.

Everything here is a dataclass that pickles (Ray passes these between actors) and has a
`to_dict` for JSON where it is written to disk.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class SandboxError(Exception):
    """The sandbox itself failed (dead host, lost slot, server error), not the command."""


class PolicyError(Exception):
    """The policy endpoint failed after retries (unreachable, 5xx, 4xx, a reply that is not a
    well-formed completion). Always an infrastructure outcome (`Outcome.POLICY_ERROR`), as is
    an LLM call past `agent.llm_timeout`; the model's own text never raises it."""


class GradingError(Exception):
    """Grading could not produce a trustworthy score: the test command could not start
    (exit 126/127, no interpreter, no pytest), produced no test report, or timed out.

    An infrastructure outcome (`Outcome.GRADING_ERROR`): retried or dropped with a reason,
    never turned into a 0.0 sent to the trainer. `kind` is a short machine-readable tag
    ("cannot_run", "no_report", "timeout", "grader_bug", ...).
    """

    def __init__(self, message: str, kind: str = "cannot_run") -> None:
        super().__init__(message)
        self.kind = kind


# --- sandbox -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One slot server: where it listens, how to authenticate, what it runs."""

    host_id: str
    url: str  # e.g. http://127.0.0.1:41234
    token: str = field(repr=False)
    image: str | None
    slots: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Slot:
    """A lease on one workspace of one host. `lease` changes on every acquire."""

    host_id: str
    index: int
    image: str | None
    lease: str
    # Seconds the acquire waited in the pool's queue before this slot was handed out.
    waited: float = field(default=0.0, compare=False)
    # How a holder reaches the slot's server itself, without the pool on the path: its
    # address, the lease's key (sandbox_image.api.lease_key: opens this slot's commands and
    # files under this lease only) and the Ray node of the pool that handed it out (a
    # loopback address is reachable from that node only). Empty: through the pool.
    url: str = field(default="", compare=False)
    key: str = field(default="", compare=False, repr=False)
    node: str = field(default="", compare=False)


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


# --- tasks ---------------------------------------------------------------------------------


@dataclass
class Task:
    """A normalized, backend-agnostic task.

    `kind` selects the TaskEnv (e.g. "swe_smith"); `data` holds the source-specific fields
    (for SWE-smith: repo, patch, FAIL_TO_PASS, PASS_TO_PASS, ...).
    """

    task_id: str
    kind: str
    instruction: str
    image: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


@dataclass(frozen=True)
class SandboxSpec:
    """What slot a task needs (a TaskEnv's `sandbox_spec`); None there means no slot at all.

    `image`: the slot's image label (None: the pool's default). `memory_mb` / `disk_mb`: the
    least the task needs; a run whose slots give less is refused before it starts.
    """

    image: str | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None


@dataclass
class Verdict:
    """A task's score for one workspace, with per-check details for the metadata."""

    score: float
    details: dict[str, Any] = field(default_factory=dict)


# --- agent ---------------------------------------------------------------------------------


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    call_id: str = ""


@dataclass(frozen=True)
class ToolLimits:
    """What the built-in tools allow (rollout.agent.tools); from `AgentConfig.tool_limits`."""

    timeout_default: float = 60.0
    timeout_min: float = 1.0
    timeout_max: float = 600.0
    max_observation_chars: int = 16_000
    max_read_bytes: int = 1_000_000
    workspace_root: str | None = None  # an absolute prefix the model may use, e.g. "/testbed"
    persistent_shell: bool = False  # terminal keeps cd and exported variables (shell_state)


@dataclass
class ToolResult:
    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass
class PythonResult:
    """One call of a slot's stateful Python session (the `python` tool).

    `result`: repr of the last expression's value (None if the code ended in a statement);
    `error`: the traceback of an exception the code raised (the session lives on);
    `session_lost`: the session died (crash, memory limit, timeout) and its state is gone:
    the next call starts a fresh one; `message` says what happened in words.
    """

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: str | None = None
    timed_out: bool = False
    session_lost: bool = False
    message: str = ""
    duration: float = 0.0


@dataclass
class Completion:
    """One sampled assistant turn."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # stop | length | tool_calls
    tool_calls: list[ToolCall] | None = None  # set when the endpoint parsed them (OpenAI chat)


@dataclass
class TokenRecord:
    """The exact training sequence of a trajectory.

    tokens: prompt + every sampled id + every tokenized observation suffix, in order.
    masks: -100 where not sampled, else the token id. logprobs: 1.0 where masked.
    """

    tokens: list[int] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    logprobs_available: bool = True


class Outcome(str, enum.Enum):
    DONE = "done"
    MAX_TURNS = "max_turns"
    CONTEXT_FULL = "context_full"
    TIMEOUT = "timeout"
    POLICY_ERROR = "policy_error"
    SANDBOX_ERROR = "sandbox_error"
    GRADING_ERROR = "grading_error"  # grading did not really run: never a score


# Outcomes that say the infrastructure failed, not the model: the group is retried (or
# dropped with the reason once its attempts are used up), never scored.
INFRA_OUTCOMES = frozenset({Outcome.SANDBOX_ERROR, Outcome.POLICY_ERROR, Outcome.GRADING_ERROR})


@dataclass
class Trajectory:
    task_id: str
    trajectory_id: str
    outcome: Outcome
    record: TokenRecord
    score: float = 0.0
    turns: int = 0
    llm_time: float = 0.0
    tool_time: float = 0.0
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
