"""The few interfaces the rest of the project is written against.

Kept small and in one place (see STYLE.md). Concrete types live in `rollout.types`.

- `Sandbox`: one acquired slot. The agent's tools, a task's `prepare` and `verify` only ever
  see this, so the same code runs against a local SlotPool, a Ray actor handle, or a test double.
- `Backend`: provisions and retires sandbox hosts (one slot server each) for a SlotPool.
- `SlotSource`: where a group's trajectories get their sandboxes (a local SlotPool, the
  cluster's SandboxPool actors), one session per trajectory.
- `PythonSandbox`: a slot that also runs a stateful Python session (the `python` tool).
- `TaskEnv`: how one kind of task (SWE-smith, terminal, math, ...) prompts, which tools and
  which slot it needs, how it prepares the slot and scores it. Found by `Task.kind` in
  `rollout.tasks.registry`.
- `Policy` / `Conversation`: a model endpoint, and one trajectory's token-exact dialogue with it.
- `Metrics`: where the run's numbers go (no-op by default; Prometheus, Ray, wandb at the edges).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rollout.record.stats import ClusterStats, GroupStats, TrajectoryStats
    from rollout.types import (Completion, ExecResult, Host, PythonResult, SandboxSpec, Task,
                               TokenRecord, ToolCall, ToolLimits, ToolResult, Verdict)


@runtime_checkable
class Sandbox(Protocol):
    """One slot held by one trajectory. Paths are relative to the slot's workspace.

    Errors of the sandbox itself (dead host, lost slot) raise `rollout.types.SandboxError`;
    a command that fails is a normal `ExecResult` with a non-zero exit code.
    """

    async def exec(
        self,
        command: str,
        *,
        timeout: float = 60.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        grading: bool = False,
    ) -> ExecResult:
        """`grading`: a verifier's run; where the slot's root is writable, with the image's
        own read-only toolchain (interpreters, shell, libraries) over the agent's files."""
        ...

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def upload_archive(self, data: bytes, *, path: str = ".") -> None:
        """Extract a tar.gz into the workspace (at `path`)."""
        ...


@runtime_checkable
class PythonSandbox(Protocol):
    """A slot whose server keeps one long-lived Python process for it (state carries over
    between calls of one trajectory; killed with the slot on release, reset or timeout)."""

    async def python(self, code: str, *, timeout: float = 60.0) -> PythonResult: ...


class Backend(Protocol):
    """Provisions and retires sandbox hosts (one slot server each). One file per backend
    (local, nomad, modal) plus its `BackendConfig`; the contract is proven for every backend
    by tests/sandbox/backend_contract.py.

    A host may be remote, slow to start (seconds to minutes) and bound to one image.
    """

    name: str

    async def start_host(self, image: str | None, slots: int) -> Host:
        """Start one slot server; return once it answers its health check. Cancelled at any
        point, it leaves nothing running (it cleans up itself, or `close()` reaps it)."""
        ...

    async def stop_host(self, host: Host) -> None:
        """Stop a host. Idempotent; never raises for an already-dead host."""
        ...

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        """The ids of `hosts` the provisioner still sees running: one control-plane call
        for all of them (the fleet calls it once per monitor interval). Never raises."""
        ...

    async def discover(self) -> list[Host]:
        """Hosts of this run already running when the fleet starts (adoption after a driver
        restart). Hosts of other, dead runs are the backend's to reap here."""
        ...

    async def close(self) -> None:
        """Stop every host this backend ever started (the teardown; an atexit or signal
        backstop does the same if the process dies without calling it)."""
        ...


class SlotSource(Protocol):
    """Where a trajectory's sandbox comes from: `rollout.group.LocalSlots` (a local SlotPool:
    tests, replay) or `actors.slot_source.PoolSlots` (the cluster's SandboxPool actors).

    `async with source.session(trajectory_id, spec) as sandbox:` holds a slot of `spec.image`
    for the block and releases it however the block ends (normally, by an error, by
    cancellation). A task that needs no slot (`spec` None) gets a `NoSlot` from the same
    session, so callers have one path. The sandbox's `slot` is the held `Slot` (its `waited`:
    seconds queued in the pool), None for no slot. Entering raises when no slot can be had
    (SandboxError, a timeout, a dead pool).
    """

    def session(self, trajectory_id: str,
                spec: SandboxSpec | None) -> AbstractAsyncContextManager[Any]: ...


class ToolExecutor(Protocol):
    """Runs one tool call of a trajectory. Raises only SandboxError (the slot is gone);
    every other failure is an observation for the model (`ToolResult.is_error`)."""

    async def run(self, call: ToolCall, *, max_timeout: float | None = None) -> ToolResult: ...


class TaskEnv(Protocol):
    """How one kind of task uses a slot: the prompt, its tools, the slot, the setup, the score.

    `rollout.tasks.base.BaseTaskEnv` gives the defaults (the built-in terminal/read_file/
    write_file tools, a slot of `task.image`).
    """

    def messages(self, task: Task) -> list[dict[str, Any]]:
        """The opening chat messages (system + user) for this task."""
        ...

    def tools(self, task: Task) -> list[dict[str, Any]]:
        """OpenAI-style tool schemas offered to the model."""
        ...

    def tool_executor(self, task: Task, sandbox: Sandbox, limits: ToolLimits) -> ToolExecutor:
        """The code that runs the tools of `tools(task)` for one trajectory in `sandbox`."""
        ...

    def sandbox_spec(self, task: Task) -> SandboxSpec | None:
        """The slot this task needs, or None for a task that needs no slot."""
        ...

    async def prepare(self, task: Task, sandbox: Sandbox) -> None:
        """Make the slot's workspace ready for the agent (raises SandboxError on failure)."""
        ...

    async def verify(self, task: Task, sandbox: Sandbox, *,
                     transcript: Sequence[dict[str, Any]] = ()) -> Verdict:
        """Score what the agent did. Runs in the same slot; `transcript` is the trajectory's
        conversation (the recorded one on replay): every kind gets both and uses what it
        grades (the workspace, or a final answer in the last reply)."""
        ...

    def reference_solution(self, task: Task) -> list[ToolCall]:
        """Tool calls that solve the task (what the `gold` policy replays)."""
        ...


class Conversation(Protocol):
    """One trajectory's dialogue with a policy, holding its exact token record."""

    async def sample(self, *, timeout: float, max_tokens: int | None = None) -> Completion:
        """Ask the model for the next assistant turn and append it to the record.

        `max_tokens` (optional) caps this turn below the policy's own limit, so the agent can
        keep a trajectory inside its context budget.
        """
        ...

    def add_tool_results(self, messages: list[dict[str, Any]]) -> None:
        """Append tool-response messages (role 'tool') to the record."""
        ...

    @property
    def num_tokens(self) -> int: ...

    def record(self) -> TokenRecord:
        """The trajectory's tokens, masks, inference logprobs and messages so far."""
        ...


class Policy(Protocol):
    """A model endpoint. `open` starts one trajectory's conversation."""

    name: str

    def open(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], task: Task
    ) -> Conversation: ...

    async def close(self) -> None: ...


class Metrics(Protocol):
    """Where a run's numbers go (Prometheus, wandb, ...). Fed only at the edges, from typed
    stats (rollout/record/stats.py): a trajectory's event line, a group's fate, the driver's view
    of the actors. Implementations must be cheap and never raise. `rollout.record.metrics` has the
    no-op default and the plain Prometheus registry; Ray metrics live in actors/."""

    def trajectory(self, stats: TrajectoryStats) -> None: ...

    def group(self, stats: GroupStats) -> None: ...

    def cluster(self, stats: ClusterStats) -> None: ...
