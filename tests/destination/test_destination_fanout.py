"""The hub's fan-out: one change written by the hub itself to every idle stream's sink, the
same bytes for all; a sink that is behind hands the change to its stream's task; each fan-out
timed once, when its last stream has it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from destination.authority import ServiceTarget
from destination.events import Changed
from destination.hub import Hub
from destination.metrics import DestinationMetrics
from destination.stream import DirectWriter, chunk

from .dst_objects import endpoint, endpoint_slice
from .test_destination_hub import new_hub, sample

WEB = ServiceTarget("shop", "web", 80)


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True

    def ready(self) -> bool:
        return self.open

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def unchunk(data: bytes) -> list[dict[str, Any]]:
    size, _, rest = data.partition(b"\r\n")
    payload = rest[: int(size, 16)]
    assert rest[int(size, 16) :] == b"\r\n"
    return [json.loads(line) for line in payload.splitlines()]


async def subscribe(
    hub: Hub, sink: Sink | None
) -> tuple[AsyncGenerator[bytes, None], asyncio.Future[bytes]]:
    """A stream past its snapshot, its generator waiting for the next change."""
    stream = hub.endpoint_lines(ServiceTarget("shop", "web", 80), sink)  # an equal target
    assert json.loads(await asyncio.wait_for(anext(stream), 5))["type"] == "snapshot"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    return stream, waiting


def change(hub: Hub, *addresses: str) -> None:
    eps = [endpoint(address) for address in addresses]
    hub.apply(Changed("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", eps)))


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def fanouts(metrics: DestinationMetrics) -> float:
    return sample(metrics, "destination_fanout_seconds_count")


@pytest.mark.asyncio
async def test_one_change_is_encoded_once_and_written_to_every_sink() -> None:
    hub, metrics = new_hub()
    sinks = [Sink() for _ in range(3)]
    opened = [await subscribe(hub, sink) for sink in sinks]
    change(hub, "10.1.0.1", "10.1.0.2")
    await turn()
    assert [len(sink.writes) for sink in sinks] == [1, 1, 1]
    assert sinks[0].writes[0] is sinks[1].writes[0] is sinks[2].writes[0]
    (line,) = unchunk(sinks[0].writes[0])
    assert line["type"] == "add"
    assert [e["address"] for e in line["endpoints"]] == ["10.1.0.1", "10.1.0.2"]
    assert not any(waiting.done() for _, waiting in opened)  # no task woke
    assert sample(metrics, "destination_fanout_streams_total", path="direct") == 3
    assert sample(metrics, "destination_updates_sent_total", api="endpoints", type="add") == 3
    assert fanouts(metrics) == 1
    change(hub, "10.1.0.2")
    await turn()
    assert [unchunk(sink.writes[1])[0]["type"] for sink in sinks] == ["remove"] * 3
    for stream, waiting in opened:
        await close(stream, waiting)
    assert sample(metrics, "destination_streams_active", api="endpoints") == 0


@pytest.mark.asyncio
async def test_a_sink_that_is_behind_hands_the_change_to_its_task() -> None:
    hub, metrics = new_hub()
    slow, fast = Sink(), Sink()
    slow_stream, slow_waiting = await subscribe(hub, slow)
    fast_stream, fast_waiting = await subscribe(hub, fast)
    slow.open = False  # e.g. TCP flow control paused the connection
    change(hub, "10.1.0.1")
    await turn()
    assert not slow.writes
    assert len(fast.writes) == 1
    assert sample(metrics, "destination_fanout_streams_total", path="task") == 1
    line = json.loads(await asyncio.wait_for(slow_waiting, 5))  # the task yields it instead
    assert line["type"] == "add"
    assert [e["address"] for e in line["endpoints"]] == ["10.1.0.1"]
    # the fan-out is timed only once the slow stream's line is written (its consumer is back)
    assert fanouts(metrics) == 0
    slow.open = True
    slow_waiting = asyncio.ensure_future(anext(slow_stream))
    await turn()
    assert fanouts(metrics) == 1
    change(hub, "10.1.0.1", "10.1.0.2")
    await turn()
    assert slow.writes[0] is fast.writes[-1]  # back in step: the same bytes again
    assert [e["address"] for e in unchunk(slow.writes[0])[0]["endpoints"]] == ["10.1.0.2"]
    assert fanouts(metrics) == 2
    await close(slow_stream, slow_waiting)
    await close(fast_stream, fast_waiting)


async def close(stream: AsyncGenerator[bytes, None], waiting: asyncio.Future[bytes]) -> None:
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()


@pytest.mark.asyncio
async def test_close_ends_streams_through_their_tasks() -> None:
    hub, _ = new_hub()
    sink = Sink()
    stream, waiting = await subscribe(hub, sink)
    hub.close()
    assert json.loads(await asyncio.wait_for(waiting, 5))["type"] == "close"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert not sink.writes


def test_chunk_framing_and_no_direct_writer_without_uvicorn() -> None:
    assert chunk(b'{"a":1}\n') == b'8\r\n{"a":1}\n\r\n'

    async def send(message: Any) -> None:
        pass

    assert DirectWriter.of(send) is None
    assert DirectWriter.of(None) is None
