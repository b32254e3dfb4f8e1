"""`SSEEventStream.batches` (gateway/providers/base.py): the events of one read from the provider
in one list, so that `proxy._relay` writes them to the client at once; nothing waits for more
than what arrived, a line split across reads is joined, and a broken stream still hands on
what came before the break. The live relay is covered by tests/test_gateway_e2e.py and the
lifecycle matrix (tests/test_request_lifecycle.py)."""

import asyncio

import httpx2
import orjson

from gateway import proxy
from gateway.providers.base import ProviderError, SSEEventStream


class Reads(httpx2.AsyncByteStream):
    """The provider's bytes as the transport would hand them over, one item per read; a read
    may wait for an event (`asyncio.Event`) to say when it arrives."""

    def __init__(self, *reads) -> None:
        self.reads = reads

    async def __aiter__(self):
        for read in self.reads:
            if isinstance(read, asyncio.Event):
                await read.wait()
                continue
            yield read


def chunk(n: int) -> bytes:
    return b"data: " + orjson.dumps({"n": n}) + b"\n\n"


def stream(*reads) -> SSEEventStream:
    response = httpx2.Response(200, stream=Reads(*reads), request=httpx2.Request("POST", "http://mock/v1"))
    return SSEEventStream(response, lambda exc: ProviderError("openai", 0, "stream_broken", str(exc), False))


async def collect(events: SSEEventStream) -> list[list[int]]:
    return [[event["n"] for event in batch] async for batch in events.batches()]


def test_the_events_of_one_read_come_together_and_a_line_split_across_reads_is_joined():
    first = chunk(1) + chunk(2) + chunk(3)[:9]  # the third event's line is cut in the middle
    rest = chunk(3)[9:] + chunk(4) + b"data: [DONE]\n\n" + chunk(99)
    assert asyncio.run(collect(stream(first, rest))) == [[1, 2], [3, 4]]


def test_an_event_is_handed_on_as_soon_as_its_read_not_when_the_next_comes():
    async def scenario():
        later = asyncio.Event()
        batches = stream(chunk(1), later, chunk(2), b"data: [DONE]\n\n").batches()
        first = await asyncio.wait_for(batches.__anext__(), timeout=1)  # the second read has not come
        later.set()
        return first, [batch async for batch in batches]

    first, rest = asyncio.run(scenario())
    assert [event["n"] for event in first] == [1]
    assert [[event["n"] for event in batch] for batch in rest] == [[2]]


def test_a_payload_that_is_not_json_ends_the_stream_after_the_events_before_it():
    async def scenario():
        seen = []
        try:
            async for batch in stream(chunk(1) + b"data: {not json\n\n" + chunk(2)).batches():
                seen.append([event["n"] for event in batch])
        except ProviderError as exc:
            return seen, exc
        return seen, None

    seen, error = asyncio.run(scenario())
    assert seen == [[1]]
    assert error is not None
    assert error.kind == "stream_broken"


def test_the_relay_falls_back_to_one_event_at_a_time_for_a_stream_without_batches():
    class OneByOne:
        async def __aiter__(self):
            for n in (1, 2):
                yield {"n": n}

    async def scenario():
        return [batch async for batch in proxy._batches(OneByOne())]

    assert asyncio.run(scenario()) == [[{"n": 1}], [{"n": 2}]]


def test_lines_split_only_at_sse_line_ends():
    """U+2028 inside a JSON payload is not a line end (str.splitlines would cut there)."""
    from gateway.providers.base import _Lines

    lines = _Lines()
    assert lines.decode('data: {"t": "a\u2028b"}\r') == ['data: {"t": "a\u2028b"}']
    assert lines.decode("\ndata: 1\nda") == ["", "data: 1"]  # the \r\n cut in two: one empty line
    assert lines.decode("ta: 2\n\n") == ["data: 2", ""]
    assert lines.decode("data: 3") == []
    assert lines.flush() == ["data: 3"]
    assert lines.flush() == []
