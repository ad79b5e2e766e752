"""Signals: a SIGTERM is recorded (not fatal) until the server's handler is in, then it runs the
app's own shutdown before the server's; one that came during startup is delivered then."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from destination.shutdown import chain_to_server, install_early_handlers


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.asyncio
@pytest.mark.usefixtures("restored_handlers")
async def test_a_sigterm_during_startup_reaches_the_server_once_it_listens() -> None:
    install_early_handlers()
    os.kill(os.getpid(), signal.SIGTERM)  # before the server's handler: recorded, not fatal
    await asyncio.sleep(0)
    server_saw: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:  # uvicorn's stand-in
        server_saw.append(signum)

    signal.signal(signal.SIGTERM, server_handler)
    closed = asyncio.Event()
    chain_to_server(closed.set)  # delivers the recorded SIGTERM now
    await asyncio.wait_for(closed.wait(), 5)
    assert server_saw == [signal.SIGTERM]


@pytest.mark.asyncio
@pytest.mark.usefixtures("restored_handlers")
async def test_sigterm_runs_the_apps_shutdown_and_the_servers() -> None:
    install_early_handlers()
    server_saw: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        server_saw.append(signum)

    signal.signal(signal.SIGTERM, server_handler)
    closed = asyncio.Event()
    chain_to_server(closed.set)
    assert not closed.is_set()  # nothing was pending
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(closed.wait(), 5)
    assert server_saw == [signal.SIGTERM]


@pytest.mark.usefixtures("restored_handlers")
def test_the_servers_re_raise_after_a_clean_stop_is_not_fatal() -> None:
    """uvicorn raises SIGTERM again once it has stopped: it lands on the recording handler."""
    install_early_handlers()
    signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # and we are still here
