"""What the HTTP/1 (``mo_backend.py``) and HTTP/2 (``mo_h2backend.py``) test backends share:
their identity and knobs, the per-path hit count, and the serve loop (listen on ``host:port``,
one task per accepted connection). A subclass speaks its protocol in ``_connection``."""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass, field

import trio

__all__ = ["ServedBackend"]


@dataclass
class ServedBackend(abc.ABC):
    name: str
    host: str
    port: int = 0
    """The port to listen on (0: any free one); set to the bound port once serving."""
    delay: float = 0.0
    fail_status: int | None = None
    slow_seconds: float = 1.0
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await nursery.start(trio.serve_listeners, self._connection, listeners)

    @abc.abstractmethod
    async def _connection(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection until it ends."""
