"""Blocking and `.aio` forms of one async implementation, as modal's synchronicity gives them.

`@dual` on an `async def` (or an async generator function) makes `obj.f(...)` block and
`obj.f.aio(...)` awaitable; the blocking form runs the coroutine on one background event
loop thread (like synchronicity does), so it works with or without a running loop.
`inspect.signature` of the wrapper is the implementation's, for the signature test.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="fake-modal", daemon=True).start()
        return _loop


def blocking(coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()


class dual:  # noqa: N801 - used as a decorator
    def __init__(self, fn: Callable[..., Any], bound: Any = None) -> None:
        self._fn = fn
        self._bound = bound
        functools.update_wrapper(self, fn)
        params = list(inspect.signature(fn).parameters.values())
        if bound is not None:
            params = params[1:]
        self.__signature__ = inspect.signature(fn).replace(parameters=params)

    def __get__(self, obj: Any, owner: Any) -> dual:
        return self if obj is None else dual(self._fn, obj)

    def _args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if self._bound is None else (self._bound, *args)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*self._args(args), **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if inspect.isasyncgenfunction(self._fn):
            async def collect() -> list[Any]:
                return [x async for x in self._fn(*self._args(args), **kwargs)]
            return iter(blocking(collect()))
        return blocking(self._fn(*self._args(args), **kwargs))
