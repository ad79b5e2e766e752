"""In-process HTTP/1.1 backends for the outbound mesh tests, each on its own 127.0.0.x address.

Each answers with its name; ``delay`` slows every answer, ``fail_status`` makes ``/`` and
``/retry`` fail with that status; ``/slow`` waits ``slow_seconds``, ``/timeout`` one second.
``hits`` counts requests by path, ``in_flight`` the requests not yet answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import trio

from tests.mesh_outbound.mo_served import ServedBackend


@dataclass
class Backend(ServedBackend):
    drop_reused: bool = False
    """Close a keep-alive connection when its second request arrives, unanswered (the race of
    a server timing out an idle connection just as the client reuses it)."""
    in_flight: int = 0

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        served = 0
        try:
            async with stream:
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        connection.receive_data(data)
                        continue
                    if not isinstance(event, h11.Request):
                        return
                    served += 1
                    if self.drop_reused and served > 1:
                        self.hits["dropped"] += 1
                        return
                    body = b""
                    while True:
                        part = connection.next_event()
                        if part is h11.NEED_DATA:
                            connection.receive_data(await stream.receive_some(65536))
                            continue
                        if isinstance(part, h11.EndOfMessage):
                            break
                        assert isinstance(part, h11.Data)
                        body += part.data
                    status, payload = await self._answer(event, body)
                    headers = [("content-length", str(len(payload))), ("x-backend", self.name)]
                    await stream.send_all(
                        connection.send(h11.Response(status_code=status, headers=headers))
                        + connection.send(h11.Data(data=payload))
                        + connection.send(h11.EndOfMessage())
                    )
                    if connection.our_state is not h11.DONE:
                        return
                    connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        path = request.target.decode().split("?")[0]
        self.hits[path] += 1
        self.in_flight += 1
        try:
            if self.delay:
                await trio.sleep(self.delay)
            if path == "/slow":
                await trio.sleep(self.slow_seconds)
            if path == "/timeout":
                await trio.sleep(1.0)
            if self.fail_status is not None and path in {"/", "/retry"}:
                return self.fail_status, f"{self.name} failing\n".encode()
            return 200, f"{self.name} {len(body)}\n".encode()
        finally:
            self.in_flight -= 1
