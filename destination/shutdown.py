"""Signals: SIGTERM/SIGINT close every stream first, and a graceful stop exits with status 0.

uvicorn handles SIGTERM itself (stop listening, let requests end, run the lifespan shutdown) and,
once it has stopped, raises the signal again for the handler that was installed before it. With
Python's default handler that re-raise kills the process with status -15 after a clean shutdown.
``install_early_handlers`` (before the server starts) puts a handler there that only records the
signal; ``chain_to_server`` (from the app's startup, once uvicorn's handlers are in) runs the app's
own ``on_term`` before uvicorn's handler, and delivers a signal that arrived during startup.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

__all__ = ["chain_to_server", "install_early_handlers"]

_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def install_early_handlers() -> None:
    """Record SIGTERM (not die from it) until the server takes over, and after it has stopped."""
    if threading.current_thread() is threading.main_thread():
        _received.clear()
        signal.signal(signal.SIGTERM, _record)


def chain_to_server(on_term: Callable[[], None]) -> None:
    """Run ``on_term`` on SIGTERM/SIGINT, then whatever handler is there now (uvicorn's).

    Without this, open streams would hold a graceful shutdown for uvicorn's whole grace period.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(on_term)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
    if _received:  # a SIGTERM that came while the server was starting: stop now
        _received.clear()
        signal.raise_signal(signal.SIGTERM)
