"""The slot server's request shapes (pydantic v2), validated at the edge.

Every field is typed strictly (no "60" for a number, no true for an int), every number is
finite and range-checked, every string has a length limit, and unknown fields are refused:
a malformed request is a 4xx naming the field, never a 500. Limits that depend on the
server's `SlotLimits` (command size, timeout cap) come in through the validation context.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)

from sandbox_image.config import ENV_KEY, SlotLimits, describe_validation_error

MAX_PATH = 4096  # PATH_MAX
MAX_ENV_ENTRIES = 256
MAX_ENV_KEY = 256
MAX_ENV_BYTES = 256 * 1024  # keys + values of one request's env together
DEFAULT_TIMEOUT = 60.0


# A slot request's lease (minted by the pool per acquire) and, for a caller without the
# host's token (a worker talking to the slot server directly), the lease's key: an HMAC of
# the slot and lease under the host's token, so only the pool can mint one, and it opens
# that slot's commands and files under that lease only (never a reset, never another slot).
LEASE_HEADER = "X-Slot-Lease"
KEY_HEADER = "X-Slot-Key"


def lease_key(token: bytes, slot: int, lease: str) -> str:
    return hmac.new(token, f"{slot}:{lease}".encode(), hashlib.sha256).hexdigest()


class TooLarge(ValueError):
    """A size over a limit: the reply is a 413 rather than a 400."""


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _limits(info: ValidationInfo) -> SlotLimits:
    return (info.context or {}).get("limits") or SlotLimits()


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    command: str
    timeout: float | None = Field(None, gt=0)
    cwd: str | None = Field(None, max_length=MAX_PATH)
    env: dict[str, str] | None = Field(None, max_length=MAX_ENV_ENTRIES)
    # A grading command: the image's pristine toolchain over the agent's files, in a fresh
    # process tree (sandbox_image/grading_view.py); a plain command where nothing is writable.
    grading: bool = False

    @field_validator("command")
    @classmethod
    def _command(cls, command: str, info: ValidationInfo) -> str:
        cap = _limits(info).command_cap
        size = len(command) if len(command) * 4 <= cap else len(command.encode("utf-8", "replace"))
        if size > cap:
            raise TooLarge(f"command is {size} bytes, over this server's command_cap of {cap} "
                           "bytes; write long scripts with the file API and run the file")
        if "\x00" in command:
            raise ValueError("command must not contain NUL bytes")
        return command

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float | None, info: ValidationInfo) -> float | None:
        return _capped_timeout(timeout, info)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str | None) -> str | None:
        if cwd is not None and "\x00" in cwd:
            raise ValueError("cwd must not contain NUL bytes")
        return cwd

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        if not env:
            return env
        total = 0
        for key, value in env.items():
            if len(key) > MAX_ENV_KEY or not ENV_KEY.match(key):
                raise ValueError(f"env key {key[:40]!r} is not a shell variable name of at "
                                 f"most {MAX_ENV_KEY} characters")
            if "\x00" in value:
                raise ValueError(f"env value of {key} contains a NUL byte")
            total += len(key) + len(value.encode("utf-8", "replace")) + 2
        if total > MAX_ENV_BYTES:
            raise TooLarge(f"env is {total} bytes, over the limit of {MAX_ENV_BYTES} bytes")
        return env

    def effective_timeout(self, limits: SlotLimits) -> float:
        return _effective_timeout(self.timeout, limits)


def _capped_timeout(timeout: float | None, info: ValidationInfo) -> float | None:
    cap = _limits(info).exec_timeout_cap
    if timeout is not None and timeout > cap:
        raise ValueError(f"timeout {timeout:g}s is over this server's exec_timeout_cap of "
                         f"{cap:g}s")
    return timeout


def _effective_timeout(timeout: float | None, limits: SlotLimits) -> float:
    return timeout if timeout is not None else min(DEFAULT_TIMEOUT, limits.exec_timeout_cap)


class PythonRequest(BaseModel):
    """One call of a slot's Python session: code (same size cap as a command) and timeout."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    code: str
    timeout: float | None = Field(None, gt=0)

    @field_validator("code")
    @classmethod
    def _code(cls, code: str, info: ValidationInfo) -> str:
        cap = _limits(info).command_cap
        size = len(code.encode("utf-8", "replace"))
        if size > cap:
            raise TooLarge(f"code is {size} bytes, over this server's command_cap of {cap} "
                           "bytes; write long code to a file and import or exec it")
        return code

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float | None, info: ValidationInfo) -> float | None:
        return _capped_timeout(timeout, info)

    def effective_timeout(self, limits: SlotLimits) -> float:
        return _effective_timeout(self.timeout, limits)


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image: str | None = Field(None, min_length=1, max_length=MAX_PATH)
    # The holder's own reset (a fresh slot for grading): the lease stays valid.
    keep_lease: bool = False


class PathQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(".", max_length=MAX_PATH)


class ReadQuery(PathQuery):
    max_bytes: int | None = Field(None, ge=0, le=1 << 62)
    encoding: Literal["raw", "text", "base64"] = "raw"


def _fail(e: ValidationError, what: str) -> BadRequest:
    too_large = any(isinstance((err.get("ctx") or {}).get("error"), TooLarge)
                    for err in e.errors())
    status = 413 if too_large else 400
    return BadRequest(f"bad {what}: {describe_validation_error(e)}", status)


def validate(model: type[BaseModel], data: Any, limits: SlotLimits, what: str) -> Any:
    """Validate `data` (already parsed) or raise BadRequest (400, or 413 for sizes)."""
    if not isinstance(data, dict):
        raise BadRequest(f"bad {what}: must be a JSON object")
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as e:
        raise _fail(e, what) from None


def query(model: type[BaseModel], request: web.Request, limits: SlotLimits) -> Any:
    params: dict[str, str] = {}
    for key, value in request.query.items():
        if key in params:
            raise BadRequest(f"bad query: {key} given more than once")
        params[key] = value
    return validate(model, params, limits, "query")


def exec_body_cap(limits: SlotLimits) -> int:
    """Largest exec body: the command and env at JSON's worst escaping (6 bytes a byte)."""
    return 6 * (limits.command_cap + MAX_ENV_BYTES) + 64 * 1024


# Longest pause a request body may take between two chunks.
BODY_IDLE_TIMEOUT = 30.0


async def read_body(request: web.Request, cap: int, what: str) -> bytes:
    """The request body, or a 413 naming the limit once it is over `cap` bytes."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BadRequest(f"{what} body of {declared} bytes is over the limit of {cap} bytes", 413)
    chunks, size = [], 0
    while True:
        try:  # a client that stalls mid-body does not hold the request (and its memory)
            chunk = await asyncio.wait_for(request.content.readany(), BODY_IDLE_TIMEOUT)
        except TimeoutError:
            raise BadRequest(f"{what} body: no data for {BODY_IDLE_TIMEOUT:g}s", 408) from None
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            raise BadRequest(f"{what} body is over the limit of {cap} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, cap: int, what: str) -> Any:
    body = await read_body(request, cap, what)
    try:
        # json (not pydantic's parser) so that NaN/Infinity reach the model and are refused
        # there with a message naming the field.
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"{what} body must be JSON ({type(e).__name__}: {str(e)[:100]})") from None
