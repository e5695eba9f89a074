"""What every test directory shares: ``async def`` tests, run on an event loop of their own.

A coroutine test function runs to its end on the ``loop`` fixture's loop when it asks
for it (directly or through a fixture: a registry on etcd is opened on that loop, and
its watch must run on the loop the test awaits it from), else on a fresh loop. This is
the one thing of pytest-asyncio the tests need, in a dozen lines instead of a plugin.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new event loop for this test; fixtures that build async things build them on it."""
    new = asyncio.new_event_loop()
    try:
        yield new
    finally:
        new.run_until_complete(new.shutdown_asyncgens())
        new.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    wanted = {name: pyfuncitem.funcargs[name]
              for name in pyfuncitem._fixtureinfo.argnames}  # the test's own parameters
    given = pyfuncitem.funcargs.get("loop")
    if isinstance(given, asyncio.AbstractEventLoop):
        given.run_until_complete(test(**wanted))
    else:
        asyncio.run(test(**wanted))
    return True
