"""A minimal HTTP/1.1 client for the tests: one request per connection, through the proxy."""

from __future__ import annotations

from dataclasses import dataclass

import h11
import trio


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def backend(self) -> str:
        return self.headers.get(b"x-backend", b"").decode()


async def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "web.shop.svc.cluster.local:8080",
    body: bytes = b"",
    timeout: float = 10,
) -> Answer:
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            headers = [("host", host), ("content-length", str(len(body)))]
            data = connection.send(h11.Request(method=method, target=path, headers=headers))
            data += connection.send(h11.Data(data=body)) if body else b""
            data += connection.send(h11.EndOfMessage())
            await stream.send_all(data)
            response: h11.Response | None = None
            payload = b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    payload += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return Answer(response.status_code, dict(response.headers), payload)
                else:
                    raise TypeError(f"unexpected {event!r}")
